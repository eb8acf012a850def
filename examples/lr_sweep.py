"""Train one config at several constant learning rates, one after another, then write the
learning-rate report (paper v1 Figs 8 and 10: between-class stiffness and stiff-domain size ξ
against learning rate at equal training loss; v2/v3: at equal epoch).

    python examples/lr_sweep.py                                     # mnist5k_fc_v1.yaml, v1 grid, offline
    python examples/lr_sweep.py --config examples/configs/mnist_fc_v1.yaml --max-epochs 20 --out runs/lr_sweep_mnist
    python examples/lr_sweep.py --lrs 1e-4 1e-3 -- --trainer.accelerator cpu   # after --: LightningCLI options
    tensorboard --logdir runs/lr_sweep

Each run logs to ``<out>/lr_<lr>/`` (TensorBoard events, ``stiffness/`` measurements and
``run.json`` with the learning rate); the report goes to ``<out>/report``. For an FC network
whose config names no ``representation_layers``, the hidden layers are added so that ξ is
measured per layer (v1 Fig. 10). Options after ``--`` (or any unknown option) go to every run's
LightningCLI.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from lightning_stiffness import StiffnessCallback
from lightning_stiffness.experiments.cli import run_cli
from lightning_stiffness.experiments.models import representation_layers
from lightning_stiffness.settings import config_setting, set_config_setting

DEFAULT_LRS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)  # paper v1 grid (Fig. 10, Fashion-MNIST; Fig. 8 adds 1e-6, 3e-6)
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "mnist5k_fc_v1.yaml"


def _clock(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def run_name(lr: float) -> str:
    return f"lr_{lr:g}"


def sweep_config(base: dict[str, Any], lr: float, out: Path, name: str, max_epochs: int | None) -> dict[str, Any]:
    """``base`` with the learning rate, the epoch budget, a TensorBoard logger writing to
    ``<out>/<name>`` and, for FC networks, the hidden layers as the callback's representation layers."""
    config = copy.deepcopy(base)
    model = config.setdefault("model", {})
    model_args = model.setdefault("init_args", {}) if "class_path" in model else model
    model_args["lr"] = lr
    trainer = config.setdefault("trainer", {})
    if max_epochs is not None:
        trainer["max_epochs"] = max_epochs
        trainer.pop("max_steps", None)
    trainer["logger"] = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": str(out), "name": "", "version": name, "default_hp_metric": False},
    }
    callbacks = [
        cb
        for cb in trainer.get("callbacks") or []
        if isinstance(cb, dict) and str(cb.get("class_path", "")).endswith("StiffnessCallback")
    ]
    if not callbacks:
        raise ValueError("the config has no lightning_stiffness.StiffnessCallback in trainer.callbacks")
    arch = str(model_args.get("arch", ""))
    for cb in callbacks:
        cb_args = cb.setdefault("init_args", {})
        if not config_setting(cb_args, "representation_layers") and arch.startswith("fc"):
            set_config_setting(cb_args, "representation_layers", representation_layers(arch, model_args.get("hidden")))
    return config


def run_sweep(
    config: str | Path,
    lrs: Sequence[float],
    out: str | Path,
    *,
    max_epochs: int | None = None,
    cli_args: Sequence[str] = (),
    overwrite: bool = False,
) -> list[Path]:
    """Train ``config`` at each learning rate in turn; returns the runs' log dirs."""
    out = Path(out)
    base = yaml.safe_load(Path(config).read_text())
    names = [run_name(lr) for lr in lrs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate learning rates: {list(lrs)}")
    for name in names:
        existing = out / name
        if existing.exists() and any(existing.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{existing} exists already: choose another --out, delete it or pass --overwrite")
            shutil.rmtree(existing)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    run_dirs: list[Path] = []
    start = time.perf_counter()
    total = len(lrs)
    for k, (lr, name) in enumerate(zip(lrs, names), start=1):
        path = out / "configs" / f"{name}.yaml"
        path.write_text(yaml.safe_dump(sweep_config(base, lr, out, name, max_epochs), sort_keys=False))
        print(f"[lr_sweep] run {k}/{total} lr={lr:g} → {out / name} (elapsed {_clock(time.perf_counter() - start)})")
        sys.stdout.flush()
        run_start = time.perf_counter()
        argv, sys.argv = sys.argv, sys.argv[:1]  # the CLI gets its arguments from ``args`` only
        try:
            cli = run_cli(["fit", "--config", str(path), *cli_args])
        finally:
            sys.argv = argv
        log_dir = Path(cli.trainer.log_dir or out / name)
        run_dirs.append(log_dir)
        elapsed = time.perf_counter() - start
        left = elapsed / k * (total - k)
        callbacks = [cb for cb in cli.trainer.callbacks if isinstance(cb, StiffnessCallback)]
        measurements = sum(len(cb.measurements) for cb in callbacks)
        crossings = ", ".join(
            f"{m.trigger.split('+')[0]} at step {m.step}"
            for cb in callbacks
            for m in cb.measurements
            if m.trigger.startswith("loss<=")
        )
        print(
            f"[lr_sweep] run {k}/{total} lr={lr:g} done in {time.perf_counter() - run_start:.1f} s: "
            f"{measurements} measurements, step {cli.trainer.global_step}"
            f"{'; ' + crossings if crossings else ''} (elapsed {_clock(elapsed)}, about {_clock(left)} left)"
        )
        sys.stdout.flush()
    return run_dirs


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="LightningCLI YAML (default: %(default)s)")
    parser.add_argument(
        "--lrs", type=float, nargs="+", default=list(DEFAULT_LRS), help="learning rates (default: %(default)s)"
    )
    parser.add_argument("--max-epochs", type=int, default=None, help="epochs per run (default: the config's)")
    parser.add_argument("--out", default="runs/lr_sweep", help="output folder (default: %(default)s)")
    parser.add_argument("--report-out", default=None, help="report folder (default: <out>/report)")
    parser.add_argument("--no-report", action="store_true", help="train only, write no report")
    parser.add_argument("--overwrite", action="store_true", help="delete existing run folders of the same names")
    args, cli_args = parser.parse_known_args(list(argv) if argv is not None else None)
    cli_args = [a for a in cli_args if a != "--"]
    run_dirs = run_sweep(
        args.config, args.lrs, args.out, max_epochs=args.max_epochs, cli_args=cli_args, overwrite=args.overwrite
    )
    if args.no_report:
        print(f"[lr_sweep] {len(run_dirs)} runs in {args.out}; no report (--no-report)")
        return run_dirs
    from lightning_stiffness.report import write_report

    report_out = Path(args.report_out) if args.report_out else Path(args.out) / "report"
    write_report(run_dirs, report_out)
    print(f"[lr_sweep] report written to {report_out}")
    print(f"[lr_sweep] view the runs with:  tensorboard --logdir {args.out}")
    return run_dirs


if __name__ == "__main__":
    main()
