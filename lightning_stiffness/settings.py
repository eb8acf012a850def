"""The callback's settings: one frozen, validated dataclass per concern, each field defined once.

:class:`~lightning_stiffness.StiffnessCallback` takes these groups (``schedule=``, ``probe=``,
``gram=``, ``measure=``, ``analysis=``, ``output=``) and, for the common case, any of their
fields as a flat keyword (``StiffnessCallback(every_n_steps=50, per_class=10)``). The flat names
are the dataclass fields themselves, resolved by :func:`resolve_settings`; ``run.json``
(:func:`settings_record`), the API reference and LightningCLI configs all follow from these
classes.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from lightning_stiffness.analytics import AnalysisConfig
from lightning_stiffness.gram.api import METHODS, current_name
from lightning_stiffness.gram.inputs import LossFn
from lightning_stiffness.measurement import SAVED_MATRICES
from lightning_stiffness.probe import BatchAdapter, GroupKey

__all__ = [
    "GramSettings",
    "MeasureSettings",
    "OutputSettings",
    "ProbeSettings",
    "ScheduleSettings",
    "Settings",
    "config_setting",
    "resolve_settings",
    "set_config_setting",
    "settings_markdown",
    "settings_record",
]

#: Probe sources the trainer provides (``probe_datasets`` may add others).
SPLITS = ("train", "val")
#: The pair kinds a critical length can be estimated over.
CRITICAL_LENGTH_PAIRS = ("within", "between", "all")


def _set(obj: Any, name: str, value: Any) -> None:
    """Normalise a field of a frozen dataclass in ``__post_init__`` (e.g. a list to a tuple)."""
    object.__setattr__(obj, name, value)


@dataclass(frozen=True)
class ScheduleSettings:
    """When to measure (paper: step 0, log-spaced steps, equal training loss).

    Args:
        every_n_steps: measure every n optimizer steps (None: only the other triggers).
        at_start: measure at step 0, before any update.
        log_points_per_decade: also measure at log-spaced steps (None: off).
        at_epoch_end: also measure at the end of each training epoch.
        loss_thresholds: measure the first time the smoothed training loss is ≤ each value
            (v1 Figs 8 and 10 compare learning rates at equal training loss).
        loss_smoothing: EMA factor for that training loss (0: no smoothing).
        max_overhead: the largest share of the fit's wall-clock the callback may take (every hook,
            measurement, saving, logging and image included), in (0, 1); None: no budget, every
            scheduled measurement is taken on time. A scheduled measurement that would exceed it is
            deferred to the next step the budget allows (waiting ones are taken together; at the
            end of training only if the budget allows, else not at all), said once when it first
            happens, with counts at the end of training; ``at_start`` and loss-threshold
            measurements are never deferred.
    """

    every_n_steps: int | None = 50
    at_start: bool = True
    log_points_per_decade: int | None = None
    at_epoch_end: bool = False
    loss_thresholds: tuple[float, ...] = ()
    loss_smoothing: float = 0.9
    max_overhead: float | None = 0.05

    def __post_init__(self) -> None:
        _set(self, "loss_thresholds", tuple(float(t) for t in self.loss_thresholds))
        if self.max_overhead is not None and not 0 < self.max_overhead < 1:
            raise ValueError(f"max_overhead must lie in (0, 1) or be None, got {self.max_overhead}")
        if self.every_n_steps is not None and self.every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive integer or None, got {self.every_n_steps}")
        if self.log_points_per_decade is not None and self.log_points_per_decade < 1:
            raise ValueError(f"log_points_per_decade must be >= 1 or None, got {self.log_points_per_decade}")


@dataclass(frozen=True)
class ProbeSettings:
    """Which examples are measured (a fixed, seeded probe drawn once).

    Args:
        splits: where the probe comes from: any of ``"train"``, ``"val"`` (None: ``"train"``, plus
            ``"val"`` when the trainer has validation data; said once at info level).
        per_class: probe examples per class and split (paper: ~15 (v1) to ~50 (v3) for 10 classes).
        seed: seed of the probe draw (and of the bootstrap, unless ``analysis=`` says otherwise).
        probe_datasets: explicit datasets per split name (default: the trainer's dataloaders).
        batch_adapter: ``callable(batch) -> (inputs, targets)`` (default: ``(x, y)`` tuples or
            dicts with a ``labels``/``label``/``y``/``target`` key).
        groups: for targets that are not class labels: a key of dict examples, or
            ``callable(example) -> int``, whose values stratify the probe and play the role of
            classes. Without it such targets (float regression values, ``(N, k)`` multi-label
            vectors, token labels) get a seeded random probe of ``per_class × 10`` examples per
            split and no class statistics.
    """

    splits: tuple[str, ...] | None = None
    per_class: int = 25
    seed: int = 0
    probe_datasets: Mapping[str, Any] | None = None
    batch_adapter: BatchAdapter | None = None
    groups: GroupKey | None = None

    def __post_init__(self) -> None:
        if self.splits is not None:
            _set(self, "splits", tuple(self.splits))
            assert self.splits is not None
            extra = set(self.probe_datasets or {})
            unknown = [s for s in self.splits if s not in SPLITS and s not in extra]
            if not self.splits or unknown:
                raise ValueError(
                    f"splits must be a non-empty subset of {SPLITS} (or keys of probe_datasets), got {self.splits}"
                )
        if self.per_class < 1:
            raise ValueError(f"per_class must be >= 1, got {self.per_class}")


@dataclass(frozen=True)
class GramSettings:
    """How the per-example-gradient Gram is computed (see :func:`~lightning_stiffness.per_example_gram`).

    Args:
        method: ``"auto"``, ``"hooks"``, ``"vmap"`` or ``"loop"``.
        params: restrict the gradient to these parameters/modules (names or objects).
        memory_budget: bytes of temporaries for the Gram (default: automatic).
        loss_fn: ``callable(outputs, targets) -> (N,)`` per-example losses (default:
            cross-entropy on the logits; regression needs e.g.
            ``lambda out, y: F.mse_loss(out.reshape(y.shape), y, reduction="none").reshape(len(y), -1).mean(1)``).
        module_attr: measure this submodule of the LightningModule (e.g. ``"model"``) instead of
            the module itself.
        verify: at the first measurement, recompute the Gram of this many probe examples with
            plain per-example autograd (``method="loop"``) and warn if the fast Gram disagrees by
            more than 1e-3 (relative): a forward that mixes examples (e.g. adds a batch mean to
            every example) is caught there. The outcome is in ``callback.verification``
            (``examples``, ``relative_error``, ``ok``); 0 skips it.
    """

    method: str = "auto"
    params: Any = None
    memory_budget: float | None = None
    loss_fn: LossFn | None = None
    module_attr: str | None = None
    verify: int = 3

    def __post_init__(self) -> None:
        _set(self, "method", current_name(self.method, "method"))
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.verify < 0:
            raise ValueError(f"verify must be >= 0, got {self.verify}")


@dataclass(frozen=True)
class MeasureSettings:
    """What each measurement computes beyond the Gram's own statistics.

    Args:
        input_distance: stiffness against input-space cosine distance and ξ (tensor inputs only).
        representation_layers: module names whose outputs give layer-wise distances (v1 Fig. 9).
        layerwise: also stiffness of each layer's own gradient block.
        superclasses: fine class → super-class map, or ``"datamodule"`` to read
            ``trainer.datamodule.superclasses`` (CIFAR-100): class matrices are reordered with
            block borders and same- vs different-super-class statistics are added.
    """

    input_distance: bool = True
    representation_layers: tuple[str, ...] = ()
    layerwise: bool = False
    superclasses: tuple[int, ...] | str | None = None

    def __post_init__(self) -> None:
        _set(self, "representation_layers", tuple(self.representation_layers))
        if isinstance(self.superclasses, str):
            if self.superclasses != "datamodule":
                raise ValueError(f"superclasses must be a sequence of ints or 'datamodule', got {self.superclasses!r}")
        elif self.superclasses is not None:
            _set(self, "superclasses", tuple(int(c) for c in self.superclasses))


@dataclass(frozen=True)
class OutputSettings:
    """Where results go.

    Args:
        log_images: heatmaps, histograms and figures to the loggers that take images
            (TensorBoard, W&B, MLflow); without one they are skipped with one notice.
        image_every: log images at every k-th measurement.
        save_dir: where measurements are saved (default ``<trainer.log_dir>/stiffness``).
        save_matrices: which ``(N, N)`` matrices each measurement file keeps: ``"gram"`` (sign and
            cosine stiffness are recomputed from it on loading; 4·N² bytes, 1 MB at N = 500),
            ``"all"`` (Gram, sign and cosine: three times that) or ``"none"`` (statistics, curves
            and class matrices only, a few tens of kB; loaded with ``has_matrices=False``).
    """

    log_images: bool = True
    image_every: int = 1
    save_dir: str | None = None
    save_matrices: str = "gram"

    def __post_init__(self) -> None:
        if self.image_every < 1:
            raise ValueError(f"image_every must be >= 1, got {self.image_every}")
        if self.save_matrices not in SAVED_MATRICES:
            raise ValueError(f"save_matrices must be one of {SAVED_MATRICES}, got {self.save_matrices!r}")


def _validate_analysis(config: AnalysisConfig) -> None:
    if config.critical_length_pairs not in CRITICAL_LENGTH_PAIRS:
        raise ValueError(
            f"critical_length_pairs must be one of {CRITICAL_LENGTH_PAIRS}, got {config.critical_length_pairs!r}"
        )
    if config.bins < 1 or config.bootstrap < 0 or config.permutations < 0:
        raise ValueError(
            f"bins must be >= 1 and bootstrap, permutations >= 0, got {config.bins}, {config.bootstrap}, "
            f"{config.permutations}"
        )


@dataclass(frozen=True)
class Settings:
    """All settings of a :class:`~lightning_stiffness.StiffnessCallback`, by group."""

    schedule: ScheduleSettings = ScheduleSettings()
    probe: ProbeSettings = ProbeSettings()
    gram: GramSettings = GramSettings()
    measure: MeasureSettings = MeasureSettings()
    analysis: AnalysisConfig = AnalysisConfig()  # noqa: RUF009  (frozen: a shared default is safe)
    output: OutputSettings = OutputSettings()


#: The groups a flat keyword can belong to, in :class:`Settings` order.
GROUPS: dict[str, type] = {f.name: type(f.default) for f in fields(Settings)}
#: ``AnalysisConfig`` fields the callback derives: the bootstrap seed from ``probe.seed`` and the
#: resolved super-class map from ``measure.superclasses``; flat keywords never set them there.
DERIVED_ANALYSIS_FIELDS = ("seed", "superclasses")


def flat_names() -> dict[str, list[str]]:
    """Flat keyword → the groups that own a field of that name."""
    owners: dict[str, list[str]] = {}
    for group, cls in GROUPS.items():
        for f in fields(cls):
            if group == "analysis" and f.name in DERIVED_ANALYSIS_FIELDS:
                continue
            owners.setdefault(f.name, []).append(group)
    return owners


def resolve_settings(groups: Mapping[str, Any], flat: Mapping[str, Any]) -> Settings:
    """Build :class:`Settings` from group objects (``None``: defaults) and flat keywords.

    A flat keyword sets the field of that name in its group; giving the same field both ways is
    an error, as is an unknown name (the message lists the valid ones). The analysis seed follows
    ``probe.seed`` unless an ``analysis=`` object is given.
    """
    owners = flat_names()
    unknown = sorted(set(flat) - set(owners))
    if unknown:
        raise TypeError(
            f"StiffnessCallback got unknown setting(s) {unknown}; valid names are {sorted(owners)} or the groups "
            f"{list(GROUPS)}"
        )
    built: dict[str, Any] = {}
    for group, cls in GROUPS.items():
        given = groups.get(group)
        if given is not None and not isinstance(given, cls):
            raise TypeError(f"{group}= must be a {cls.__name__}, got {type(given).__name__}")
        mine = {k: v for k, v in flat.items() if group in owners[k]}
        if given is not None and mine:
            raise TypeError(f"{sorted(mine)} given both as keywords and inside {group}=; give each setting once")
        built[group] = given if given is not None else cls(**mine)
    if groups.get("analysis") is None:
        built["analysis"] = dataclasses.replace(built["analysis"], seed=built["probe"].seed)
    _validate_analysis(built["analysis"])
    return Settings(**built)


def config_setting(init_args: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """Read setting ``name`` from a LightningCLI ``init_args`` dict of the callback, whether it
    is written inside its group (``schedule: {every_n_steps: ...}``) or flat."""
    if name in init_args:
        return init_args[name]
    for group in flat_names().get(name, []):
        if name in (init_args.get(group) or {}):
            return init_args[group][name]
    return default


def set_config_setting(init_args: dict[str, Any], name: str, value: Any) -> None:
    """Write setting ``name`` into its group of a LightningCLI ``init_args`` dict (``None``
    ``value``: remove it, so the default applies)."""
    owners = flat_names().get(name)
    if not owners:
        raise KeyError(f"unknown StiffnessCallback setting {name!r}")
    init_args.pop(name, None)
    group = init_args.setdefault(owners[0], {})
    if value is None:
        group.pop(name, None)
    else:
        group[name] = value


def settings_record(settings: Settings) -> dict[str, dict[str, Any]]:
    """JSON-ready record of every setting by group (callables and datasets as their ``repr``)."""
    return {
        group: {f.name: _plain(getattr(getattr(settings, group), f.name)) for f in fields(getattr(settings, group))}
        for group in GROUPS
    }


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Callable):  # type: ignore[arg-type]
        return getattr(value, "__qualname__", repr(value))
    return repr(value)


def field_docs(cls: type) -> dict[str, str]:
    """Each field's description from the ``Args:`` section of ``cls``'s docstring (one line)."""
    doc = inspect.getdoc(cls) or ""
    args = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    out: dict[str, str] = {}
    name = None
    for line in args.splitlines():
        match = re.match(r"^    (\w+): (.*)$", line)
        if match:
            name = match.group(1)
            out[name] = match.group(2).strip()
        elif name and line.startswith("        "):
            out[name] += " " + line.strip()
    return out


def settings_markdown() -> str:
    """The settings tables of docs/api.md, generated from the dataclasses (a test keeps the page
    equal to this): one table per group with each field's type, default and meaning."""
    lines = []
    for group, cls in GROUPS.items():
        docs = field_docs(cls)
        lines += [f"**`{group}=` {cls.__name__}**", "", "| Setting | Default | Meaning |", "|---|---|---|"]
        for f in fields(cls):
            derived = group == "analysis" and f.name in DERIVED_ANALYSIS_FIELDS
            meaning = docs.get(f.name, "").replace("``", "`").replace("|", "\\|")
            if derived:
                meaning += " (set by the callback: not a flat keyword)"
            lines.append(f"| `{f.name}` | `{f.default!r}` | {meaning} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(settings_markdown(), end="")
