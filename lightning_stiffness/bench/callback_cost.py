"""What the analytics and the callback cost: analytics against the Gram they start from, and the
demo's training without and with :class:`~lightning_stiffness.StiffnessCallback`."""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lightning_stiffness.bench.timing import _ms, cpu_seconds, measure
from lightning_stiffness.gram import per_example_gram

__all__ = ["TARGET_SHARE", "analytics_vs_gram", "callback_overhead"]

#: The callback's own time at default settings, as a share of a demo-sized fit: the target.
TARGET_SHARE = 0.05


def analytics_vs_gram(device: torch.device, n: int, repeats: int) -> str:
    """Analytics (:func:`~lightning_stiffness.analytics.analyze`) against the Gram they start from,
    at the demo's settings: its FC network 784-500-300-100-10, 10 classes, two splits, input
    distances, with bootstrap 0 (the callback's default) and 50 (the demo's). Wall-clock medians
    and, on a CPU, the smallest CPU time."""
    from lightning_stiffness.analytics import AnalysisConfig, analyze, input_distances
    from lightning_stiffness.demo import demo_model

    model = demo_model(784).to(device).eval()
    x = torch.randn(n, 784, device=device)
    x = x / x.norm(dim=1, keepdim=True)
    y = torch.arange(n, device=device) % 10
    splits = (torch.arange(n) >= n // 2).long()
    distances = {"input": input_distances(x)}
    gram = measure(lambda: per_example_gram(model, x, y), device, repeats)
    assert gram.gram is not None
    cpu = device.type == "cpu"
    gram_cpu = cpu_seconds(lambda: per_example_gram(model, x, y), repeats) if cpu else math.nan
    lines = [f"\nanalytics vs Gram: demo FC 784-500-300-100-10, N={n}, 10 classes, input distances"]
    lines.append(f"  {'part':<28}{'wall':>11}{'vs Gram':>9}{'CPU time':>11}{'vs Gram':>9}")
    lines.append(f"  {'Gram (auto)':<28}{_ms(gram.seconds):>11}{'1.00x':>9}{_ms(gram_cpu):>11}{'1.00x':>9}")
    for bootstrap in (0, 50):
        config = AnalysisConfig(bootstrap=bootstrap)

        def run(config: AnalysisConfig = config) -> None:
            assert gram.gram is not None
            analyze(gram.gram, y, splits, ("train", "val"), step=0, epoch=0, trigger="bench",
                    distances=distances, config=config)  # fmt: skip

        timing = measure(run, device, repeats)
        analytics_cpu = cpu_seconds(run, repeats) if cpu else math.nan
        lines.append(
            f"  {f'analytics, bootstrap={bootstrap}':<28}{_ms(timing.seconds):>11}"
            f"{timing.seconds / gram.seconds:>8.2f}x{_ms(analytics_cpu):>11}{analytics_cpu / gram_cpu:>8.2f}x"
        )
    return "\n".join(lines)


def callback_overhead(steps: int, repeats: int) -> str:
    """The demo's training (its model and data, batch 32, validation each epoch, CPU) for
    ``steps`` optimizer steps: without the callback, with ``StiffnessCallback()`` at its default
    settings, with ``max_overhead=None`` and with its images off, each round running every row.

    Per row: the fit's wall-clock (median, and its ratio to the run without the callback within
    each round), the median training step (each step timed from its start to its end by a timer
    callback that runs before the stiffness callback: does the callback slow the steps
    themselves?), the time outside the steps beyond the run without the callback (what the
    callback added between steps), the callback's own accounting (``callback.budget.spent``) and
    its share of the fit, and the disk it wrote."""
    import tempfile

    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.data import DataLoader

    from lightning_stiffness import StiffnessCallback
    from lightning_stiffness.demo import demo_model, load_digits_dataset

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    train, val = load_digits_dataset("mnist5k", 0)

    class StepClock(L.Callback):
        """Wall-clock of every training step, batch start to batch end."""

        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._start = 0.0

        def on_train_batch_start(self, *args: object) -> None:
            self._start = time.perf_counter()

        def on_train_batch_end(self, *args: object) -> None:
            self.seconds.append(time.perf_counter() - self._start)

    def fit(callback: StiffnessCallback | None) -> tuple[float, list[float], int]:
        L.seed_everything(0, verbose=False)
        clock = StepClock()
        with tempfile.TemporaryDirectory() as out:
            trainer = L.Trainer(
                max_steps=steps,
                accelerator="cpu",
                devices=1,
                logger=TensorBoardLogger(out, name="bench", default_hp_metric=False),
                callbacks=[clock, callback] if callback else [clock],
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                log_every_n_steps=10,
                num_sanity_val_steps=0,
            )
            model = demo_model(train.tensors[0].shape[1])
            start = time.perf_counter()
            trainer.fit(model, DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, batch_size=256))
            seconds = time.perf_counter() - start
            disk = sum(f.stat().st_size for f in Path(out).rglob("measurement-*.pt"))
        return seconds, clock.seconds, disk

    configs: dict[str, Callable[[], StiffnessCallback | None]] = {
        "without the callback": lambda: None,
        "StiffnessCallback()": lambda: StiffnessCallback(),
        "  max_overhead=None": lambda: StiffnessCallback(max_overhead=None),
        "  images off": lambda: StiffnessCallback(log_images=False),
    }
    fit(None)  # warm-up: imports, first-call overheads
    wall: dict[str, list[float]] = {k: [] for k in configs}
    step: dict[str, list[float]] = {k: [] for k in configs}
    outside: dict[str, list[float]] = {k: [] for k in configs}
    own: dict[str, list[float]] = {k: [] for k in configs}
    notes: dict[str, str] = {}
    for _ in range(repeats):
        for name, make in configs.items():
            callback = make()
            seconds, step_seconds, disk = fit(callback)
            wall[name].append(seconds)
            step[name].append(statistics.median(step_seconds))
            outside[name].append(seconds - sum(step_seconds))
            if callback is not None:
                budget = callback.budget  # every second the callback counted: what cost/share reports
                own[name].append(budget.spent)
                count = len(callback.measurements)
                each = disk / max(count, 1) / 2**20
                notes[name] = (
                    f"{count} measurements ({budget.deferred} deferred, {budget.merged} merged, "
                    f"{len(budget.pending)} not taken), {disk / 2**20:.1f} MiB on disk ({each:.2f} each)"
                )
    base = "without the callback"
    lines = [
        f"\ncallback overhead: demo FC on mnist5k, batch 32, {steps} steps, {repeats} rounds (each runs each row)",
        f"  {'run':<22}{'wall':>7}{'ratio':>7}{'range':>12}{'step':>9}{'+outside':>9}{'own s':>7}{'share':>7}  notes",
    ]
    for name in configs:
        # ratios within a round: both runs saw the same machine load, which drifts between rounds
        ratios = [w / b for w, b in zip(wall[name], wall[base], strict=True)]
        extra = statistics.median(o - b for o, b in zip(outside[name], outside[base], strict=True))
        shares = [o / w for o, w in zip(own[name], wall[name], strict=True)] if own[name] else []
        mine = f"{statistics.median(own[name]):>7.2f}{statistics.median(shares):>7.1%}" if own[name] else " " * 14
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}x"
        lines.append(
            f"  {name:<22}{statistics.median(wall[name]):>6.2f}s{statistics.median(ratios):>6.2f}x{spread:>12}"
            f"{statistics.median(step[name]) * 1e3:>7.2f}ms{extra:>8.2f}s{mine}  {notes.get(name, '')}"
        )
    default = "StiffnessCallback()"
    default_share = statistics.median(o / w for o, w in zip(own[default], wall[default], strict=True))
    verdict = "within" if default_share <= TARGET_SHARE else "ABOVE"
    lines += [
        f"  default settings: the callback's own time is {default_share:.1%} of the fit's wall-clock, "
        f"{verdict} the target of {TARGET_SHARE:.0%}",
        "  step = median training step; +outside = time outside the steps beyond the run without the callback",
        "  (median over rounds); own s = every second the callback counted itself (probe, hooks, measurements",
        "  with saving, logging and images): what stiffness/cost/share reports and max_overhead budgets;",
        "  share = own s / the fit's wall-clock. On a shared machine the fit's wall-clock moves by more than",
        "  the callback's cost between runs (the range column); the median step and the time outside the",
        "  steps show where a difference comes from.",
    ]
    return "\n".join(lines)
