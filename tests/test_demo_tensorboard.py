"""The demo trains on real digits and its logs are readable by a real TensorBoard server."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from lightning_stiffness.demo import demo_model, load_digits_dataset, run_demo


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("demo")
    cb = run_demo(out, dataset="digits", epochs=1, every_n_steps=20, per_class=6, quiet=True)
    return out, cb


def test_demo_data_is_real_and_preprocessed() -> None:
    train, val = load_digits_dataset("digits")
    x, y = train.tensors
    assert len(train) + len(val) == 1797 and x.shape[1] == 64
    assert sorted(set(y.tolist())) == list(range(10))
    norms = x.norm(dim=1)
    assert ((norms - 1).abs() < 1e-5).all(), "inputs are unit length as in the paper"


def test_demo_model_is_the_experiments_v3_fc_network() -> None:
    from torch import nn

    from lightning_stiffness.experiments import StiffnessClassifier

    model = demo_model(784)
    assert isinstance(model, StiffnessClassifier) and model.hparams["lr"] == 1e-3
    shapes = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert shapes == [(784, 500), (500, 300), (300, 100), (100, 10)]
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 3


def test_demo_measures_and_writes_logs(demo_run: tuple[Path, object]) -> None:
    out, cb = demo_run
    assert cb.measurements[0].step == 0 and len(cb.measurements) >= 4 and not cb.failures  # type: ignore[attr-defined]
    first = cb.measurements[0].summaries["sign"]["all"]  # type: ignore[attr-defined]
    assert first.within > 0.5, "at initialisation same-class gradients are aligned (paper claim 1)"
    assert list(out.rglob("events.out.tfevents.*")) and list(out.rglob("measurement-*.pt"))


def _event_tags(out: Path) -> dict[str, list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = next(out.rglob("events.out.tfevents.*")).parent
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc.Tags()


def test_event_reader_sees_stiffness_tags(demo_run: tuple[Path, object]) -> None:
    tags = _event_tags(demo_run[0])
    assert {"stiffness/sign/within", "stiffness/cos/between", "stiffness/m_coherence"} <= set(tags["scalars"])
    assert {"stiffness/class_matrix/sign", "stiffness/class_matrix/cos", "stiffness/matrix_by_class/cos"} <= set(
        tags["images"]
    )
    assert "stiffness/offdiagonal_cos" in tags["histograms"]


def test_logged_xi_is_a_measured_distance(demo_run: tuple[Path, object]) -> None:
    """ξ is logged only where the stiffness crosses zero within the data; a censored bin edge or a
    line's zero far outside the distances (the demo once logged 1.5 at every step, and 209) is not ξ."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, cb = demo_run
    acc = EventAccumulator(str(next(out.rglob("events.out.tfevents.*")).parent), size_guidance={"scalars": 0})
    acc.Reload()
    logged = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    by_step = {m.step: m for m in cb.measurements}  # type: ignore[attr-defined]
    checked = 0
    for step, m in by_step.items():
        for key, xi in m.critical_lengths.items():
            value = logged.get(f"stiffness/critical_length/{key}", {}).get(step)
            bound = logged.get(f"stiffness/critical_length_lower_bound/{key}", {}).get(step)
            if xi.crossed:
                assert value is not None and bound is None and 0 <= value <= 2, (key, step)
                assert value == pytest.approx(xi.value, rel=1e-6)
            else:
                assert value is None, f"{key} at step {step} is {xi.status} but was logged as ξ"
                assert (bound is not None) == math.isfinite(xi.lower_bound), (key, step)
            checked += 1
    assert checked >= 4 * len(by_step)  # input space: sign and cos, two estimators


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read())


def test_tensorboard_server_serves_stiffness(demo_run: tuple[Path, object]) -> None:
    out = demo_run[0]
    port = _free_port()
    tensorboard = Path(sys.executable).with_name("tensorboard")
    proc = subprocess.Popen(
        [str(tensorboard), "--logdir", str(out), "--host", "127.0.0.1", "--port", str(port), "--load_fast", "false"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        scalars: dict = {}
        while time.monotonic() < deadline:
            try:
                scalars = json.loads(_get(f"{base}/data/plugin/scalars/tags"))
                if any("stiffness/sign/within" in tags for tags in scalars.values()):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        run, _tags = next((r, t) for r, t in scalars.items() if "stiffness/sign/within" in t)
        images = json.loads(_get(f"{base}/data/plugin/images/tags"))
        assert "stiffness/class_matrix/sign" in images[run]
        query = f"run={urllib.parse.quote(run)}&tag={urllib.parse.quote('stiffness/class_matrix/sign')}"
        entries = json.loads(_get(f"{base}/data/plugin/images/images?{query}"))
        assert entries and entries[0]["step"] == 0
        png = _get(f"{base}/data/plugin/images/individualImage?{entries[0]['query']}")
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        values = json.loads(
            _get(
                f"{base}/data/plugin/scalars/scalars?run={urllib.parse.quote(run)}&tag="
                f"{urllib.parse.quote('stiffness/sign/within')}"
            )
        )
        assert values and values[0][1] == 0  # [wall_time, step, value]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
