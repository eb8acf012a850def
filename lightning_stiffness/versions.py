"""One run saved in several folders: a run resumed from a checkpoint writes its new measurements
into the resumed trainer's log directory, with a ``TensorBoardLogger`` a new ``version_N``
folder beside the first one. These functions decide whether such folders are versions of ONE
run and merge them; they refuse folders of different runs with the setting that differs.

Two folders are versions of one run when their ``run.json`` (written by
:class:`~lightning_stiffness.StiffnessCallback` at every train start) agree on
:data:`IDENTITY_KEYS` — the module's and data module's hyperparameters and the probe settings
(``splits``, ``per_class``, ``seed``, ``params``, ``module_attr``; the probe indices too when
``run.json`` records them) — and their measurements were taken on the same probe (same labels,
splits and split names, example by example). Schedule and analysis settings (``every_n_steps``,
``loss_thresholds``, ``max_epochs``, ...) may change on resume and are not compared.

The merged history is ordered by step. Versions are ordered by their first measured step; a
later version starts where its predecessor was resumed, so measurements of the earlier version
at or after the later version's first step belong to the trajectory that was abandoned (a resume
from an earlier checkpoint) or repeat a step: they are dropped, with a warning naming them.
"""

from __future__ import annotations

import itertools
import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_stiffness.measurement import Measurement, is_url

#: ``run.json`` entries that must agree between versions of one run (``callback.*``: inside the
#: ``callback`` block; ``probe``: the probe indices, compared when both files record them).
IDENTITY_KEYS = (
    "hparams",
    "datamodule_hparams",
    "callback.splits",
    "callback.per_class",
    "callback.seed",
    "callback.params",
    "callback.module_attr",
    "probe",
)


@dataclass(frozen=True)
class Version:
    """One folder's share of a run: its path (or fsspec URL), its ``run.json`` (None if absent)
    and measurements."""

    path: Path | str
    info: dict[str, Any] | None
    measurements: list[Measurement]

    @property
    def first_step(self) -> int:
        return min(m.step for m in self.measurements)


def read_run_info(folder: str | Path) -> dict[str, Any] | None:
    """The ``run.json`` beside a folder's measurements (a path or an fsspec URL), or None when
    there is none."""
    if is_url(folder):
        from fsspec.core import url_to_fs

        fs, location = url_to_fs(f"{str(folder).rstrip('/')}/run.json")
        return json.loads(fs.cat_file(location)) if fs.exists(location) else None
    path = Path(folder) / "run.json"
    return json.loads(path.read_text()) if path.exists() else None


def _name(path: Path | str) -> str:
    """A folder's short name in messages: ``version_1`` for ``.../version_1/stiffness``."""
    parts = path.parts if isinstance(path, Path) else tuple(str(path).rstrip("/").split("/"))
    return parts[-2] if parts[-1] == "stiffness" and len(parts) >= 2 else parts[-1]


def _lookup(info: dict[str, Any], key: str) -> Any:
    value: Any = info
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _probe(m: Measurement) -> dict[str, list[Any]]:
    return {"labels": m.labels.tolist(), "splits": m.splits.tolist(), "split names": list(m.split_names)}


def _canonical(value: Any) -> str:
    """``value`` as sorted JSON, with the memory addresses in object reprs (``<... at 0x7f...>``,
    which ``run.json`` holds for settings that are objects) removed: they differ between the
    processes of one resumed run."""
    return _ADDRESS.sub("", json.dumps(value, sort_keys=True, default=str))


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def difference(a: Version, b: Version) -> str | None:
    """Why ``a`` and ``b`` are not versions of one run (None when they may be)."""
    for v in (a, b):
        if v.info is None:
            return f"{v.path} has no run.json, so it cannot be matched to another folder"
    assert a.info is not None and b.info is not None
    for key in IDENTITY_KEYS:
        if key == "probe" and (key not in a.info or key not in b.info):
            continue
        left, right = _lookup(a.info, key), _lookup(b.info, key)
        if _canonical(left) != _canonical(right):
            return f"run.json {key} differs ({_short(left)} in {_name(a.path)}, {_short(right)} in {_name(b.path)})"
    pa, pb = _probe(a.measurements[0]), _probe(b.measurements[0])
    for key in pa:
        if pa[key] != pb[key]:
            return f"the probe's {key} differ (the measurements were taken on different probe examples)"
    if a.first_step == b.first_step:
        return (
            f"both start at step {a.first_step}: two runs with the same settings (repeats), not one run resumed "
            "from a checkpoint"
        )
    return None


def merge_versions(versions: Sequence[Version]) -> list[Measurement]:
    """The measurements of several versions of ONE run as one history, ordered by step.

    Raises ``ValueError`` naming the differing setting when two versions are not of one run
    (see the module docstring). Each version keeps its measurements at steps before the next
    version's first step; later ones are dropped with a ``UserWarning``.
    """
    ordered = sorted((v for v in versions if v.measurements), key=lambda v: v.first_step)
    for a, b in itertools.combinations(ordered, 2):
        why = difference(a, b)
        if why is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                runs = len(group_versions(ordered))
            raise ValueError(
                f"{a.path} and {b.path} are not versions of one resumed run ({why}): the folders hold measurements "
                f"of {runs} runs. Pass one run's directory, or load several runs with "
                "lightning_stiffness.report.load_runs"
            )
    merged: list[Measurement] = []
    dropped: list[str] = []
    for k, v in enumerate(ordered):
        end = ordered[k + 1].first_step if k + 1 < len(ordered) else None
        kept = [m for m in v.measurements if end is None or m.step < end]
        if len(kept) < len(v.measurements):
            steps = sorted(m.step for m in v.measurements if end is not None and m.step >= end)
            dropped.append(
                f"{len(steps)} of {v.path} (steps {steps[0]}–{steps[-1]}, at or after the step {end} where "
                f"{ordered[k + 1].path} continues)"
            )
        merged.extend(kept)
    if dropped:
        warnings.warn(
            "merging the versions of a resumed run: dropped measurements "
            + "; ".join(dropped)
            + " — the run was resumed from an earlier checkpoint, so they belong to the abandoned continuation",
            UserWarning,
            stacklevel=3,
        )
    return sorted(merged, key=lambda m: m.step)


def group_versions(versions: Sequence[Version]) -> list[list[Version]]:
    """Partition folders into runs: folders that are versions of one run (pairwise, see
    :func:`difference`) form one group; every other folder is a run of its own. Groups keep the
    order of their first folder in ``versions``. A folder that could continue more than one
    group (repeated runs with equal settings) is kept apart, with a warning."""
    groups: list[list[Version]] = []
    for v in versions:
        homes = [g for g in groups if v.measurements and all(u.measurements and difference(u, v) is None for u in g)]
        if len(homes) == 1:
            homes[0].append(v)
            continue
        if len(homes) > 1:
            warnings.warn(
                f"{v.path} may continue any of {len(homes)} runs with the same settings "
                f"({', '.join(str(g[0].path) for g in homes)}); it is reported as a run of its own",
                UserWarning,
                stacklevel=2,
            )
        groups.append([v])
    return groups


__all__ = ["IDENTITY_KEYS", "Version", "difference", "group_versions", "merge_versions", "read_run_info"]
