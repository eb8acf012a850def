"""Quickstart: add StiffnessCallback to an existing Trainer (scikit-learn's 8x8 digits, CPU, ~20 s).

python examples/quickstart.py
tensorboard --logdir quickstart_logs
"""

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_stiffness import StiffnessCallback, load_measurements


class DigitClassifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the callback calls forward: it must return logits
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def main() -> None:
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y)
    train, val = TensorDataset(x[:1500], y[:1500]), TensorDataset(x[1500:], y[1500:])

    stiffness = StiffnessCallback(every_n_steps=20, per_class=10)  # probe: 10 per class from train and val
    trainer = L.Trainer(max_epochs=3, logger=TensorBoardLogger("quickstart_logs"), callbacks=[stiffness])
    trainer.fit(DigitClassifier(), DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, batch_size=256))

    last = stiffness.measurements[-1]
    print(
        f"step {last.step}: sign stiffness within {last.summaries['sign']['all'].within:+.2f}, "
        f"between {last.summaries['sign']['all'].between:+.2f}"
    )
    print(f"{len(load_measurements(trainer.log_dir))} measurements saved under {trainer.log_dir}/stiffness")


if __name__ == "__main__":
    main()
