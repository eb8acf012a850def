"""The callback's settings: each defined once (a dataclass field), reachable flat or by group,
validated, recorded in run.json and documented in docs/api.md from the same source."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from lightning_stiffness import StiffnessCallback
from lightning_stiffness.analytics import AnalysisConfig
from lightning_stiffness.settings import (
    DERIVED_ANALYSIS_FIELDS,
    GROUPS,
    ProbeSettings,
    ScheduleSettings,
    config_setting,
    flat_names,
    set_config_setting,
    settings_markdown,
)
from tests.lightning_helpers import TinyClassifier, loaders, trainer

ROOT = Path(__file__).resolve().parents[1]


def test_every_flat_keyword_lands_in_its_group_field() -> None:
    """Set every settable field flat to a non-default value: each lands in the field of that name,
    nothing lands by position."""
    values = dict(
        every_n_steps=7, at_start=False, log_points_per_decade=2, at_epoch_end=True, loss_thresholds=(0.5,),
        loss_smoothing=0.5, splits=("train",), per_class=3, seed=11, groups="domain", method="loop",
        params=["net.0"], memory_budget=123.0, module_attr="net", verify=1, input_distance=False,
        representation_layers=("net.1",), layerwise=True, superclasses=(0, 0, 1), num_classes=3,
        include_self=True, bins=9, critical_length_pairs="all", max_distance=0.7, bootstrap=4,
        permutations=17, log_images=False, image_every=2, save_dir="somewhere", max_overhead=0.2, save_matrices="none",
    )  # fmt: skip
    assert set(values) | {"probe_datasets", "batch_adapter", "loss_fn"} == set(flat_names())
    cb = StiffnessCallback(**values)
    for name, value in values.items():
        (group,) = flat_names()[name]
        assert getattr(getattr(cb.settings, group), name) == (list(value) if name == "params" else value), name
    assert cb.settings.analysis.seed == 11  # the bootstrap follows the probe seed
    assert cb.schedule.every_n_steps == 7 and cb.module_attr == "net"


def test_groups_and_flat_keywords() -> None:
    cb = StiffnessCallback(probe=ProbeSettings(per_class=4), schedule=ScheduleSettings(at_start=False), bins=5)
    assert cb.settings.probe.per_class == 4 and not cb.settings.schedule.at_start and cb.settings.analysis.bins == 5
    assert cb.settings.schedule.every_n_steps == 50
    cb = StiffnessCallback(3, schedule=ScheduleSettings(at_epoch_end=True))  # top-level every_n_steps joins it
    assert cb.settings.schedule.every_n_steps == 3 and cb.settings.schedule.at_epoch_end
    with pytest.raises(TypeError, match=r"\['per_class'\] given both"):
        StiffnessCallback(probe=ProbeSettings(per_class=4), per_class=5)
    with pytest.raises(TypeError, match=r"unknown setting\(s\) \['per_clas'\].*'per_class'"):
        StiffnessCallback(per_clas=5)
    with pytest.raises(TypeError, match="every_n_steps given twice"):
        StiffnessCallback(3, schedule=ScheduleSettings(every_n_steps=4))
    with pytest.raises(TypeError, match="probe= must be a ProbeSettings"):
        StiffnessCallback(probe={"per_class": 3})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(splits=("test",)), "splits must be"),
        (dict(splits=()), "splits must be"),
        (dict(per_class=0), "per_class"),
        (dict(method="magic"), "method must be"),
        (dict(every_n_steps=0), "every_n_steps"),
        (dict(log_points_per_decade=0), "log_points_per_decade"),
        (dict(loss_thresholds=(float("nan"),)), "loss_thresholds"),
        (dict(loss_smoothing=1.0), "loss_smoothing"),
        (dict(critical_length_pairs="odd"), "critical_length_pairs"),
        (dict(image_every=0), "image_every"),
        (dict(superclasses="nope"), "superclasses"),
        (dict(verify=-1), "verify"),
        (dict(bins=0), "bins"),
    ],
)
def test_bad_values_are_refused_in_the_constructor(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        StiffnessCallback(**kwargs)


def test_run_json_records_every_setting_by_group(tmp_path: Path) -> None:
    cb = StiffnessCallback(every_n_steps=2, per_class=3, log_images=False, permutations=9, splits=("train",))
    train, _ = loaders()
    trainer(tmp_path, [cb], max_steps=2).fit(TinyClassifier(), train)
    run = json.loads((tmp_path / "stiffness" / "run.json").read_text())
    for group, cls in GROUPS.items():
        assert set(run["settings"][group]) == {f.name for f in fields(cls)}, group
    assert run["settings"]["probe"]["per_class"] == 3 and run["settings"]["analysis"]["permutations"] == 9
    assert run["callback"]["per_class"] == 3 and run["callback"]["every_n_steps"] == 2  # the flat view


def test_api_page_settings_tables_are_generated_from_the_dataclasses() -> None:
    page = (ROOT / "docs" / "api.md").read_text()
    block = page.split("<!-- settings:begin -->\n", 1)[1].split("<!-- settings:end -->", 1)[0]
    assert block == settings_markdown(), "regenerate with: python -m lightning_stiffness.settings"
    for group, cls in GROUPS.items():
        for f in fields(cls):
            assert f"| `{f.name}` |" in block, (group, f.name)
    assert set(DERIVED_ANALYSIS_FIELDS) <= {f.name for f in fields(AnalysisConfig)}


def test_cli_config_helpers_read_and_write_groups() -> None:
    init_args: dict = {"every_n_steps": 3, "probe": {"per_class": 4}}
    assert config_setting(init_args, "per_class") == 4 and config_setting(init_args, "every_n_steps") == 3
    set_config_setting(init_args, "log_images", False)
    set_config_setting(init_args, "per_class", None)
    assert init_args == {"every_n_steps": 3, "probe": {}, "output": {"log_images": False}}
    with pytest.raises(KeyError, match="unknown"):
        set_config_setting(init_args, "nope", 1)
