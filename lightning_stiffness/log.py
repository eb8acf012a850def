"""Send a measurement to Lightning loggers: scalars to every logger; images to every logger that
takes them (TensorBoard, Weights & Biases, MLflow), through each one's own image API; the
off-diagonal histogram and the custom-scalars layout to TensorBoard (``logger.experiment`` is a
no-op on ranks other than 0)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from lightning_stiffness.measurement import Measurement
from lightning_stiffness.viz.images import measurement_images
from lightning_stiffness.viz.labelled import have_pil

__all__ = [
    "custom_scalars_layout",
    "image_loggers",
    "log_images",
    "log_scalars",
    "scalar_metrics",
    "start_tag",
    "tensorboard_writers",
]


def scalar_metrics(m: Measurement) -> dict[str, float]:
    """Flat ``stiffness/...`` scalars of a measurement, as logged to every logger."""
    out: dict[str, float] = {}
    for kind, per_pairs in m.summaries.items():
        for pairs, summary in per_pairs.items():
            prefix = f"stiffness/{kind}" if pairs == "all" else f"stiffness/{kind}/{pairs}"
            out[f"{prefix}/within"] = summary.within
            out[f"{prefix}/between"] = summary.between
            out[f"{prefix}/all"] = summary.all
    out["stiffness/m_coherence"] = m.m_coherence
    out["stiffness/gradient_diversity"] = m.gradient_diversity
    for key, xi in m.critical_lengths.items():
        # ξ only when the data cross zero (NaN, hence dropped, otherwise); a censored or extrapolated
        # estimate logs its lower bound under its own tag, never as ξ
        out[f"stiffness/critical_length/{key}"] = xi.value
        if not xi.crossed:
            out[f"stiffness/critical_length_lower_bound/{key}"] = xi.lower_bound
    for name, summary in m.layers.items():
        out[f"stiffness/layer/{name}/cos/within"] = summary.within
        out[f"stiffness/layer/{name}/cos/between"] = summary.between
    for kind, stats in m.superclass.items():
        out[f"stiffness/superclass/{kind}/same"] = stats.same
        out[f"stiffness/superclass/{kind}/different"] = stats.different
        out[f"stiffness/superclass/{kind}/difference"] = stats.difference
        out[f"stiffness/superclass/{kind}/p_value"] = stats.p_value
    out["stiffness/cost/seconds"] = m.seconds
    return {k: v for k, v in out.items() if v is not None and not math.isnan(v)}


def tensorboard_writers(loggers: Sequence[Logger]) -> list[Any]:
    """The ``SummaryWriter`` of every attached TensorBoard logger."""
    return [lg.experiment for lg in loggers if isinstance(lg, TensorBoardLogger)]


def log_scalars(loggers: Sequence[Logger], m: Measurement, extra: dict[str, float], step: int) -> None:
    metrics = {**scalar_metrics(m), **extra}
    for lg in loggers:
        lg.log_metrics(metrics, step=step)


def custom_scalars_layout(kinds: Sequence[str] = ("sign", "cos")) -> dict[str, Any]:
    """TensorBoard custom-scalars layout: within/between/all on one chart per kind, ξ (measured
    only), the lower bounds of ξ where the data do not cross zero (a separate chart), cost."""
    charts: dict[str, Any] = {
        f"{kind} stiffness": ["Multiline", [f"stiffness/{kind}/(within|between|all)$"]] for kind in kinds
    }
    charts["critical length ξ"] = ["Multiline", ["stiffness/critical_length/.*"]]
    charts["ξ ≥ (no zero crossing in the data)"] = ["Multiline", ["stiffness/critical_length_lower_bound/.*"]]
    charts["gradient coherence"] = ["Multiline", ["stiffness/(m_coherence|gradient_diversity)"]]
    charts["cost"] = ["Multiline", ["stiffness/cost/.*"]]
    return {"stiffness": charts}


def image_loggers(loggers: Sequence[Logger]) -> list[Logger]:
    """The loggers that can take images: ``TensorBoardLogger``, ``WandbLogger`` and ``MLFlowLogger``
    (a bare ``SummaryWriter`` is accepted too). Others (CSV, ...) get scalars only."""
    return [lg for lg in loggers if _image_api(lg) is not None]


def _image_api(logger: Any) -> str | None:
    if isinstance(logger, TensorBoardLogger):
        return "tensorboard"
    if isinstance(logger, WandbLogger):
        return "wandb"
    if isinstance(logger, MLFlowLogger):
        return "mlflow"
    if not isinstance(logger, Logger) and callable(getattr(logger, "add_image", None)):
        return "writer"  # a SummaryWriter handed over directly
    return None


def start_tag(tag: str) -> str:
    """Where the first measurement's image is also logged: TensorBoard keeps 10 images per tag by
    default (reservoir sampling that always keeps the newest), so the first would be lost."""
    return f"{tag}/start"


def log_images(
    loggers: Sequence[Logger],
    m: Measurement,
    step: int,
    superclasses: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    *,
    start: bool | None = None,
) -> list[str]:
    """Render the measurement's images once (:func:`~lightning_stiffness.viz.images.measurement_images`:
    labelled class matrices, N×N matrices sorted by class, stiffness vs distance) and send them to
    every logger in :func:`image_loggers`; TensorBoard also gets a histogram of the off-diagonal
    cosine stiffness.

    Args:
        loggers: the trainer's loggers (those that cannot take images are skipped).
        m: the measurement; ``step`` the global step to log at.
        superclasses: fine class → super-class, to order the class matrices by super-class.
        class_names: name of each class (tick labels); indices when ``None``.
        start: also log the images under ``<tag>/start`` so that they survive TensorBoard's
            10-images-per-tag default (default: when ``m`` was measured at train start).

    Returns:
        The class names of the loggers that received the images (empty: none could).
    """
    targets = [(lg, api) for lg in loggers if (api := _image_api(lg)) is not None]
    if not targets:
        return []
    images = measurement_images(m, superclasses, class_names)
    if start if start is not None else "start" in m.trigger.split("+"):
        images.update({start_tag(tag): image for tag, image in list(images.items())})
    off_diagonal = m.cos[~torch.eye(m.num_examples, dtype=torch.bool)]
    sent = []
    for lg, api in targets:
        if api in ("tensorboard", "writer"):
            writer: Any = lg.experiment if isinstance(lg, TensorBoardLogger) else lg
            _write_tensorboard(writer, images, {"stiffness/offdiagonal_cos": off_diagonal}, step)
        elif api == "wandb":
            for tag, image in images.items():
                lg.log_image(key=tag, images=[_hwc(image)], step=step)  # type: ignore[attr-defined]
        elif api == "mlflow":
            client, run_id = lg.experiment, lg.run_id  # type: ignore[attr-defined]
            for tag, image in images.items():
                client.log_image(run_id, _hwc(image), artifact_file=f"{tag}/step_{step:09d}.png")
        sent.append(type(lg).__name__)
    return sent


#: zlib level of the PNGs sent to TensorBoard: 1 encodes these flat-coloured figures about twice
#: as fast as PIL's default (6) for files about a quarter larger.
PNG_COMPRESS_LEVEL = 1
#: Buckets of the off-diagonal cosine histogram, equal widths over [-1, 1].
HISTOGRAM_BUCKETS = 64


def _write_tensorboard(
    writer: Any, images: dict[str, torch.Tensor], cosines: dict[str, torch.Tensor], step: int
) -> None:
    """Write ``uint8`` ``(3, H, W)`` images and histograms of cosines to a TensorBoard writer.

    torch's ``add_image`` converts each image to float and back and encodes it at PIL's default
    compression, and ``add_histogram``'s exponential buckets sort the N² values: together most of
    the time a measurement spent on TensorBoard. Here each image is encoded once (a picture under
    two tags too), each histogram has :data:`HISTOGRAM_BUCKETS` equal buckets over [-1, 1]
    (:func:`_cosine_histogram`), and all go into one summary event. The writer is not flushed:
    like Lightning's own logging, events reach the file at the writer's ``flush_secs`` and when
    the logger finalizes. Writers other than torch's (e.g. tensorboardX) get ``add_image`` and
    ``add_histogram_raw``."""
    file_writer = _torch_file_writer(writer)
    if file_writer is None or not have_pil():
        for tag, image in images.items():
            writer.add_image(tag, image, global_step=step, dataformats="CHW")
        for tag, values in cosines.items():
            histogram = _cosine_histogram(values)
            if histogram is not None:
                writer.add_histogram_raw(tag, **histogram, global_step=step)
        return
    from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary

    encoded: dict[int, bytes] = {}
    summaries = []
    for tag, image in images.items():
        png = encoded.get(id(image))
        if png is None:
            png = encoded[id(image)] = _png(image)
        picture = Summary.Image(height=image.shape[1], width=image.shape[2], colorspace=3, encoded_image_string=png)
        summaries.append(Summary.Value(tag=tag, image=picture))
    for tag, values in cosines.items():
        histogram = _cosine_histogram(values)
        if histogram is not None:
            limits, counts = histogram.pop("bucket_limits"), histogram.pop("bucket_counts")
            proto = HistogramProto(**histogram, bucket_limit=limits, bucket=counts)
            summaries.append(Summary.Value(tag=tag, histo=proto))
    file_writer.add_summary(Summary(value=summaries), step)


def _cosine_histogram(values: torch.Tensor) -> dict[str, Any] | None:
    """``add_histogram_raw``'s arguments for cosines: :data:`HISTOGRAM_BUCKETS` equal buckets over
    [-1, 1] (non-finite values left out, rounding just outside [-1, 1] counted in the edge
    buckets); None when no value is finite."""
    finite = values[torch.isfinite(values)].double()
    if finite.numel() == 0:
        return None
    counts = torch.histc(finite.clamp(-1.0, 1.0), bins=HISTOGRAM_BUCKETS, min=-1.0, max=1.0)
    return {
        "min": float(finite.min()),
        "max": float(finite.max()),
        "num": int(finite.numel()),
        "sum": float(finite.sum()),
        "sum_squares": float((finite * finite).sum()),
        "bucket_limits": torch.linspace(-1.0, 1.0, HISTOGRAM_BUCKETS + 1)[1:].tolist(),
        "bucket_counts": counts.tolist(),
    }


def _torch_file_writer(writer: Any) -> Any:
    """The event-file writer behind torch's ``SummaryWriter`` (None for any other writer)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # no tensorboard package: whatever writer this is, it has add_image
        return None
    if not isinstance(writer, SummaryWriter):
        return None
    return writer._get_file_writer()


def _png(image: torch.Tensor) -> bytes:
    """PNG bytes of a ``uint8`` ``(3, H, W)`` image."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(_hwc(image.cpu())).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def _hwc(image: torch.Tensor) -> Any:
    """``(3, H, W)`` uint8 tensor → ``(H, W, 3)`` numpy array (what W&B and MLflow take)."""
    return image.permute(1, 2, 0).contiguous().numpy()
