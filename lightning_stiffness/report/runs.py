"""Find and load saved runs: a run is a directory holding ``measurement-*.pt`` files and the
``run.json`` that :class:`~lightning_stiffness.StiffnessCallback` writes beside them."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_stiffness.measurement import Measurement, load_measurements
from lightning_stiffness.versions import Version, group_versions, merge_versions, read_run_info

__all__ = ["Run", "find_run_dirs", "load_run", "load_runs"]


@dataclass
class Run:
    """One training run's measurements and settings. A run resumed from a checkpoint into new
    ``version_N`` folders is one run: ``path`` is its first folder, ``versions`` all of them."""

    path: Path
    measurements: list[Measurement]
    info: dict[str, Any] = field(default_factory=dict)
    versions: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        parts = self.path.parts
        name = "/".join(parts[-3:-1]) if self.path.name == "stiffness" and len(parts) >= 3 else self.path.name
        if len(self.versions) > 1:
            name += f" (resumed: {len(self.versions)} versions)"
        return name

    @property
    def lr(self) -> float | None:
        value = self.info.get("hparams", {}).get("lr")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def permuted_labels(self) -> bool:
        hp = {**self.info.get("datamodule_hparams", {}), **self.info.get("hparams", {})}
        return bool(hp.get("permute_labels", False))

    @property
    def is_text(self) -> bool:
        return "model_name_or_path" in self.info.get("hparams", {})

    @property
    def representation_layers(self) -> list[str]:
        return list(self.info.get("representation_layers", []))

    def val_losses(self) -> list[tuple[int, float]]:
        """(step, last validation loss) per measurement that has one."""
        out = []
        for m in self.measurements:
            value = _first(m.metrics, ("val/loss", "val_loss", "val/loss_epoch"))
            if value is not None:
                out.append((m.step, value))
        return out


def _first(metrics: dict[str, float], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        value = metrics.get(key)
        if value is not None and math.isfinite(value):
            return value
    return None


def find_run_dirs(path: str | Path) -> list[Path]:
    """Every directory under ``path`` (itself included) that holds saved measurements."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"no such directory: {root}")
    dirs = sorted({f.parent for f in root.rglob("measurement-*.pt")})
    if not dirs:
        raise FileNotFoundError(f"no saved measurements (measurement-*.pt) under {root}")
    return dirs


def load_run(directory: str | Path) -> Run:
    path = Path(directory)
    info_file = path / "run.json"
    info = json.loads(info_file.read_text()) if info_file.exists() else {}
    return Run(path, load_measurements(path), info, [path])


def load_runs(paths: list[str | Path]) -> list[Run]:
    """All runs found under ``paths`` (each a run dir or a folder of runs), by learning rate then name.

    Folders that are versions of one resumed run (same ``run.json`` settings and probe, see
    :mod:`lightning_stiffness.versions`) are merged into one :class:`Run`; the newest version's
    ``run.json`` is its ``info``.
    """
    found = [Version(d, read_run_info(d), load_measurements(d)) for p in paths for d in find_run_dirs(p)]
    runs = []
    for group in group_versions(found):
        if len(group) == 1:
            v = group[0]
            runs.append(Run(Path(v.path), v.measurements, v.info or {}, [Path(v.path)]))
            continue
        ordered = sorted(group, key=lambda v: v.first_step)
        folders = [Path(v.path) for v in ordered]  # the report reads local folders (find_run_dirs)
        runs.append(Run(folders[0], merge_versions(ordered), ordered[-1].info or {}, folders))
    return sorted(runs, key=lambda r: (r.lr if r.lr is not None else math.inf, r.name))
