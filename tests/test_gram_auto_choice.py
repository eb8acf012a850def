"""How ``auto`` chooses between the hooks path and the whole model's ``vmap`` (gram/cost.py
``plan_auto``, gram/auto.py ``run_auto``), and the thread limit under CPU contention
(gram/threads.py). No timings are asserted: the trial's clock is replaced by a fake one."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_stiffness.gram import api, auto, cost, per_example_gram_blocks
from lightning_stiffness.gram.cost import ModelCost, plan_auto
from lightning_stiffness.gram.threads import THREADS_ENV, gram_threads, limited_threads, threads_for_load
from tests.conftest import double_model, rel_err, to_double

pytestmark = pytest.mark.usefixtures("single_thread")

BUDGET = 4 * 2**30


def conv_net() -> nn.Module:
    """Convolutions with many positions (T = 64, 16): the kernel trick saves little here."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.Flatten(),
        nn.Linear(8 * 16, 4),
    )  # fmt: skip


def wide_mlp() -> nn.Module:
    """T = 1 everywhere: the kernel trick saves almost all of the N²·P Gram product."""
    return nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 4))


def float64_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return per_example_gram_blocks(double_model(model), to_double(x), y, method="loop").gram


class FakeClock:
    """Each reading advances by the next of ``steps``: a trial call reads the clock before and
    after its run, and the calls alternate kernel, vmap, so ``steps`` decide which looked faster."""

    def __init__(self, kernel_seconds: float, vmap_seconds: float) -> None:
        self.now = 0.0
        self.steps = iter([0.0, kernel_seconds, 0.0, vmap_seconds] * auto.TRIAL_RUNS)

    def __call__(self) -> float:
        self.now += next(self.steps, 0.0)
        return self.now


@pytest.fixture
def trial_everywhere(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tiny models are below TRIAL_MIN_FLOPS; lower it so the tests exercise the trial."""
    monkeypatch.setattr(cost, "TRIAL_MIN_FLOPS", 0.0)
    yield


def test_model_cost_of_a_linear_layer_from_shapes() -> None:
    layer = nn.Linear(5, 3)  # T = 7 positions per example (a (7, 5) input)
    cost_ = cost.model_cost({"l": layer}, {"l": [((1, 7, 5), (1, 7, 3))]}, {"l": 18}, n=4)
    ghost = 2.0 * 16 * 49 * (5 + 3 + 1)
    materialize = 2.0 * 4 * 7 * 18 + 2.0 * 16 * 18
    assert cost_.hooks_flops == min(ghost, materialize) and cost_.vmap_flops == materialize
    assert cost_.jacobian_bytes == 4 * 18 * cost.BYTES


def test_plan_never_trials_vmap_for_sharded_or_oversized_models() -> None:
    close = ModelCost(hooks_flops=9e9, vmap_flops=1e10, jacobian_bytes=1e6)
    assert plan_auto(close, BUDGET, sharded=False) == "trial"
    assert plan_auto(close, BUDGET, sharded=True) == "hooks"
    assert plan_auto(ModelCost(9e9, 1e10, jacobian_bytes=0.6 * BUDGET), BUDGET, sharded=False) == "hooks"
    assert plan_auto(ModelCost(1e9, 1e10, jacobian_bytes=1e6), BUDGET, sharded=False) == "hooks"  # 90% saved
    assert plan_auto(ModelCost(9.0, 10.0, jacobian_bytes=1e6), BUDGET, sharded=False) == "hooks"  # tiny work


def test_auto_takes_vmap_where_it_was_faster_and_stays_exact(
    trial_everywhere: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model, x, y = conv_net(), torch.randn(6, 3, 8, 8), torch.randint(0, 4, (6,))
    reference = float64_loop(model, x, y)
    monkeypatch.setattr(auto, "_clock", FakeClock(kernel_seconds=2.0, vmap_seconds=1.0))
    trial = [per_example_gram_blocks(model, x, y, method="auto") for _ in range(auto.TRIAL_CALLS)]
    assert [r.method for r in trial] == ["hooks", "vmap"] * auto.TRIAL_RUNS
    third = per_example_gram_blocks(model, x, y, method="auto")
    assert third.method == "vmap" and set(third.paths.values()) == {"vmap"}
    for result in [*trial, third]:
        assert rel_err(result.gram, reference) < 1e-5
    block_sum = sum(third.blocks.values())
    assert isinstance(block_sum, torch.Tensor) and rel_err(block_sum, reference) < 1e-5
    # another probe size is another decision: a fresh trial, kernel first
    assert per_example_gram_blocks(model, x[:5], y[:5], method="auto").method == "hooks"


def test_auto_keeps_the_kernel_where_it_was_faster(trial_everywhere: None, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    model, x, y = conv_net(), torch.randn(6, 3, 8, 8), torch.randint(0, 4, (6,))
    monkeypatch.setattr(auto, "_clock", FakeClock(kernel_seconds=1.0, vmap_seconds=2.0))
    methods = [per_example_gram_blocks(model, x, y, method="auto").method for _ in range(auto.TRIAL_CALLS)]
    assert methods == ["hooks", "vmap"] * auto.TRIAL_RUNS  # the trial
    again = per_example_gram_blocks(model, x, y, method="auto")
    assert again.method == "hooks" and rel_err(again.gram, float64_loop(model, x, y)) < 1e-5


def test_auto_never_trials_vmap_where_the_kernel_trick_saves_most(
    trial_everywhere: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(2)
    model, x, y = wide_mlp(), torch.randn(32, 64), torch.randint(0, 4, (32,))
    clock = FakeClock(kernel_seconds=2.0, vmap_seconds=1.0)  # vmap would "win" if it were timed
    monkeypatch.setattr(auto, "_clock", clock)
    for _ in range(2):
        result = per_example_gram_blocks(model, x, y, method="auto")
        assert result.method == "hooks"
    assert clock.now == 0.0  # nothing was timed


def test_auto_never_runs_vmap_on_sharded_models(trial_everywhere: None, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(3)
    model, x, y = conv_net(), torch.randn(6, 3, 8, 8), torch.randint(0, 4, (6,))
    monkeypatch.setattr(auto, "is_sharded", lambda *_: True)
    monkeypatch.setattr(auto, "vmap_rows", lambda *_: pytest.fail("vmap started on a sharded model"))
    monkeypatch.setattr(auto, "_clock", FakeClock(kernel_seconds=2.0, vmap_seconds=1.0))
    for _ in range(3):
        assert per_example_gram_blocks(model, x, y, method="auto").method == "hooks"


def test_forced_layer_strategy_keeps_auto_on_the_kernel(
    trial_everywhere: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(4)
    model, x, y = conv_net(), torch.randn(6, 3, 8, 8), torch.randint(0, 4, (6,))
    monkeypatch.setattr(auto, "_clock", FakeClock(kernel_seconds=2.0, vmap_seconds=1.0))
    for _ in range(3):
        result = per_example_gram_blocks(model, x, y, method="auto", layer_path="materialize")
        assert result.method == "hooks" and "materialize" in result.paths.values()
        assert "vmap" not in result.paths.values()


# --------------------------------------------------------------------------- threads


@pytest.mark.parametrize(
    ("current", "cores", "load", "expected"),
    [
        (2, 2, 2.0, 2),  # only our own threads: keep them
        (2, 2, 0.3, 2),  # idle machine
        (2, 2, 3.0, 1),  # one other busy task holds a core
        (2, 2, 7.0, 1),  # heavily loaded: never below one
        (8, 16, 12.0, 8),  # 4 others on 16 cores: 12 free, capped at the user's 8
        (8, 16, 20.0, 4),
    ],
)
def test_threads_for_load(current: int, cores: int, load: float, expected: int) -> None:
    assert threads_for_load(current, cores, load) == expected


@pytest.mark.parametrize(
    ("load", "others_now", "expected"),
    [
        (4.0, 0.0, 2),  # the load average still counts a job that just ended; nothing runs now
        (4.0, 2.0, 1),  # both see other work
        (2.0, 1.0, 1),  # a job that just started: not in the load average yet
        (4.0, None, 1),  # no instantaneous count (not Linux): the load average decides
    ],
)
def test_the_instantaneous_count_corrects_a_lagging_load_average(
    load: float, others_now: float | None, expected: int
) -> None:
    assert threads_for_load(2, 2, load, others_now) == expected


def test_others_running_reads_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_stiffness.gram import threads

    assert threads.parse_runnable("0.52 0.61 0.70 3/812 12345\n") == 3
    readings = itertools.cycle([5, 2, 4])
    monkeypatch.setattr(threads, "_runnable_total", lambda: next(readings))
    monkeypatch.setattr(threads, "_own_running", lambda: 1)
    assert threads.others_running(samples=3, interval=0.0) == 3.0  # median of 4, 1, 3
    own = itertools.cycle([1, 2])  # one of our threads starts running during a reading
    monkeypatch.setattr(threads, "_own_running", lambda: next(own))
    readings = itertools.cycle([3])
    assert threads.others_running(samples=3, interval=0.0) == 1.0  # 3 less the larger count of ours
    monkeypatch.setattr(threads, "_own_running", lambda: None)
    assert threads.others_running(samples=3, interval=0.0) is None


def test_own_running_counts_this_thread() -> None:
    from lightning_stiffness.gram import threads

    if not Path("/proc/self/task").is_dir():
        pytest.skip("needs Linux /proc")
    own, total = threads._own_running(), threads._runnable_total()
    assert own is not None and own >= 1  # the thread reading it is running
    assert total is not None and total >= 1


def test_limited_threads_restores_the_setting_also_on_error() -> None:
    before = torch.get_num_threads()  # 1 under the single_thread fixture
    with limited_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    with pytest.raises(ZeroDivisionError), limited_threads(before + 1):
        assert torch.get_num_threads() == before + 1
        _ = 1 / 0
    assert torch.get_num_threads() == before


def test_gram_restores_threads_when_it_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.setenv(THREADS_ENV, str(before + 1))
    seen: list[int] = []

    def broken(*args: object, **kwargs: object) -> str:
        seen.append(torch.get_num_threads())
        raise ValueError("boom")

    monkeypatch.setattr(api, "_run", broken)
    with pytest.raises(ValueError, match="boom"):
        per_example_gram_blocks(wide_mlp(), torch.randn(3, 64), torch.tensor([0, 1, 2]))
    assert seen == [before + 1] and torch.get_num_threads() == before


def test_thread_override_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(THREADS_ENV, "0")
    assert gram_threads(torch.device("cpu")) == torch.get_num_threads()
    monkeypatch.setenv(THREADS_ENV, "3")
    assert gram_threads(torch.device("cpu")) == 3
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(ValueError, match=THREADS_ENV):
        gram_threads(torch.device("cpu"))
