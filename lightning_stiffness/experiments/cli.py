"""LightningCLI entry point of the paper's experiments (``examples/train.py``).

Model and datamodule are chosen by ``class_path`` in the config (subclass mode), e.g.::

    python examples/train.py fit --config examples/configs/mnist_fc_v1.yaml
    python examples/train.py fit --config examples/configs/mnist_fc_v1.yaml --model.init_args.lr 3e-4
"""

from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

__all__ = ["main", "run_cli"]


def run_cli(args: list[str] | None = None, *, run: bool = True) -> LightningCLI:
    """Build (and with ``run``, execute) the CLI; ``args`` as on the command line (default ``sys.argv``)."""
    return LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


def main() -> None:
    run_cli()


if __name__ == "__main__":
    main()
