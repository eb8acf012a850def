"""The visualisation package: one colour map everywhere, labelled heatmaps, image logging."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from lightning_stiffness.viz import colorize, matplotlib_colormap, value_rgb


def test_old_render_path_is_the_viz_code() -> None:
    from lightning_stiffness import render, viz

    for name in ("colorize", "heatmap", "sort_by_label", "colorbar", "with_colorbar", "BLUE", "WHITE", "RED"):
        assert getattr(render, name) is getattr(viz, name), name
    from lightning_stiffness import figures
    from lightning_stiffness.viz import curves, figure

    assert figures.distance_figure is curves.distance_figure and figures.new_figure is figure.new_figure
    assert figures.have_matplotlib is figure.have_matplotlib


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")
def test_matplotlib_figures_use_the_same_colours_as_the_images() -> None:
    """The report's colour map gives the RGB that TensorBoard's images give, value for value."""
    cmap = matplotlib_colormap()
    from matplotlib.colors import Normalize

    norm = Normalize(vmin=-1, vmax=1)
    for value in (-1.0, -0.5, 0.0, 0.5, 1.0):
        rgba = cmap(norm(value))
        assert tuple(round(c * 255) for c in rgba[:3]) == value_rgb(value), value
    # between grid points the table is within one entry (2/256 in value) of the exact map
    values = torch.linspace(-1, 1, 1001)
    exact = colorize(values.unsqueeze(0))[:, 0, :].T.int()
    table = torch.tensor([cmap(norm(v))[:3] for v in values.tolist()]).mul(255).round().int()
    assert (exact - table).abs().max() <= 3
    assert tuple(round(c * 255) for c in cmap(float("nan"))[:3]) == value_rgb(float("nan"))


def test_claims_take_their_data_from_the_data_layer_not_from_plotting() -> None:
    """report/claims.py imports no plotting module (its selectors live in report/series.py)."""
    import ast
    from pathlib import Path

    import lightning_stiffness.report.claims as claims

    tree = ast.parse(Path(claims.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    plotting = {m for m in imported if m.startswith(("matplotlib", "lightning_stiffness.viz")) or m.endswith("plots")}
    assert not plotting, plotting
    assert "lightning_stiffness.report.series" in imported


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")
def test_report_class_matrix_grid_uses_the_shared_map_and_wording() -> None:
    from pathlib import Path

    from matplotlib.colors import Normalize

    from lightning_stiffness.report import load_run
    from lightning_stiffness.viz.class_matrix import class_matrix_grid
    from lightning_stiffness.viz.labels import XLABEL, YLABEL

    run = load_run(Path(__file__).parent / "fixtures" / "run-0.1.0")
    fig = class_matrix_grid(run, "sign")
    panels = [ax for ax in fig.axes if ax.images]
    assert panels, "no class-matrix panel drawn"
    for ax in panels:
        mappable = ax.images[0]
        assert mappable.get_clim() == (-1.0, 1.0)
        rgba = mappable.get_cmap()(Normalize(-1, 1)(0.5))
        assert tuple(round(c * 255) for c in rgba[:3]) == value_rgb(0.5)
        assert ax.get_xlabel() == XLABEL and ax.get_ylabel() == YLABEL
    bar = next(ax for ax in fig.axes if not ax.images)
    assert [t.get_text().replace("−", "-") for t in bar.get_yticklabels()] == ["-1", "-0.5", "0", "0.5", "1"]


# ---------------------------------------------------------------- labelled heatmaps

NAMES = ["airplane", "automobile", "bird", "cat"]


def _labelled(matrix: torch.Tensor, names: list[str] | None = NAMES, **kw: object):  # type: ignore[no-untyped-def]
    from lightning_stiffness.viz.labelled import class_ticks, labelled_heatmap

    return labelled_heatmap(
        matrix,
        title="sign stiffness E[sign(g_1·g_2)], step 120, train+val",
        xlabel="class of g_1 (gradient taken on it)",
        ylabel="class of g_2",
        ticks=class_ticks(range(matrix.shape[0]), names),
        **kw,  # type: ignore[arg-type]
    )


def test_labelled_heatmap_says_what_it_shows() -> None:
    """Title, both axis labels, every class name on both axes and the colour-bar numbers are drawn,
    each where it belongs, in dark pixels; the cells keep the one colour map's RGB."""
    matrix = torch.tensor([[1.0, -1.0, 0.5, 0.0], [-0.5, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, -1.0]])
    li = _labelled(matrix)
    assert li.texts_of("title") == ["sign stiffness E[sign(g_1·g_2)], step 120, train+val"]
    assert li.texts_of("xlabel") == ["class of g_1 (gradient taken on it)"]
    assert li.texts_of("ylabel") == ["class of g_2"]
    assert li.texts_of("xtick") == NAMES and li.texts_of("ytick") == NAMES
    assert li.texts_of("colorbar") == ["-1", "-0.5", "0", "0.5", "1"]
    img = li.image
    assert img.dtype == torch.uint8 and img.shape[0] == 3
    left, top, right, bottom = li.plot_box
    for item in li.texts:
        x0, y0, x1, y1 = item.box
        assert 0 <= x0 < x1 <= img.shape[2] and 0 <= y0 < y1 <= img.shape[1], item
        assert not (x0 < right and x1 > left and y0 < bottom and y1 > top), f"{item} covers the matrix"
        assert img[:, y0:y1, x0:x1].amax(0).min() < 100, f"no dark pixels where {item.text!r} was drawn"
    by_role = {t.role: t.box for t in li.texts}
    assert by_role["title"][3] <= top and by_role["xlabel"][1] >= bottom and by_role["ylabel"][2] <= left
    ytick = {t.text: t.box for t in li.texts if t.role == "ytick"}
    assert ytick["airplane"][1] < ytick["automobile"][1] < ytick["bird"][1], "row 0 is at the top"
    bar = {t.text: t.box for t in li.texts if t.role == "colorbar"}
    assert bar["1"][1] < bar["0"][1] < bar["-1"][1], "1 at the top of the colour bar"
    cell = (bottom - top) // 4
    for r in range(4):
        for c in range(4):
            y, x = top + r * cell + cell // 2, left + c * cell + cell // 2
            assert tuple(img[:, y, x].tolist()) == value_rgb(matrix[r, c].item()), (r, c)


def test_many_classes_get_a_subset_of_ticks_and_indices_without_names() -> None:
    from lightning_stiffness.viz.labelled import MAX_TICKS, class_ticks

    li = _labelled(torch.zeros(100, 100), names=None)
    assert li.texts_of("ytick") == [str(c) for c in range(0, 100, 5)] and len(li.texts_of("ytick")) == MAX_TICKS
    assert [p for p, _ in class_ticks(range(100))][:2] == [0.5, 5.5], "ticks sit on cell centres"
    order = [2, 0, 3, 1]
    assert [t for _, t in class_ticks(order, NAMES)] == ["bird", "airplane", "cat", "automobile"]
    with pytest.raises(ValueError, match="class names"):
        class_ticks(range(5), NAMES)


def test_block_ticks_sit_at_block_centres() -> None:
    from lightning_stiffness.viz.labelled import block_ticks

    assert block_ticks([3, 5], 10, [0, 2, 3], NAMES) == [(1.5, "airplane"), (4.0, "bird"), (7.5, "cat")]


def test_block_mean_matches_a_loop() -> None:
    from lightning_stiffness.viz.images import block_mean

    torch.manual_seed(0)
    x = torch.randn(7, 7)
    x[0, 1] = float("nan")
    got = block_mean(x, 3)
    assert got.shape == (3, 3)
    for i in range(3):
        for j in range(3):
            block = x[3 * i : 3 * i + 3, 3 * j : 3 * j + 3]
            want = block[torch.isfinite(block)].double().mean()
            assert abs(got[i, j].item() - want.item()) < 1e-6, (i, j)
    assert block_mean(x, 1) is x


# ---------------------------------------------------------------- sending images to loggers


def _measurement(step: int = 0, trigger: str = "start"):  # type: ignore[no-untyped-def]
    from lightning_stiffness.analytics import AnalysisConfig, analyze

    torch.manual_seed(0)
    n, c = 24, 4
    labels = torch.arange(n) % c
    g = torch.randn(n, 16, dtype=torch.float64) + torch.nn.functional.one_hot(labels, 16).double()
    x = torch.nn.functional.normalize(torch.randn(n, 5), dim=1)
    return analyze(
        g @ g.T,
        labels,
        torch.zeros(n, dtype=torch.long),
        ("train",),
        step=step,
        epoch=0,
        trigger=trigger,
        distances={"input": 1 - x @ x.T},
        config=AnalysisConfig(num_classes=c, bins=5),
    )


def _tb_images(logdir: str) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logdir, size_guidance={"images": 0})
    acc.Reload()
    return {tag: [e.step for e in acc.Images(tag)] for tag in acc.Tags()["images"]}


def test_log_images_to_tensorboard_keeps_the_start_under_its_own_tag(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from lightning_stiffness.log import image_loggers, log_images

    tb, csv = TensorBoardLogger(str(tmp_path), name="tb"), CSVLogger(str(tmp_path), name="csv")
    assert image_loggers([csv, tb]) == [tb]
    assert log_images([csv], _measurement(), 0) == [], "no logger takes images: nothing rendered or sent"
    assert log_images([csv, tb], _measurement(0, "start"), 0, class_names=NAMES) == ["TensorBoardLogger"]
    assert log_images([tb], _measurement(7, "every_n_steps"), 7) == ["TensorBoardLogger"]
    tb.experiment.flush()
    steps = _tb_images(tb.log_dir)
    for tag in ("stiffness/class_matrix/sign", "stiffness/matrix_by_class/cos", "stiffness/distance/input"):
        assert steps[tag] == [0, 7], tag
        assert steps[f"{tag}/start"] == [0], f"{tag}: the first measurement also has its own tag"


def test_tensorboard_images_decode_to_the_rendered_pixels(tmp_path: Path) -> None:
    """The images written to the event file (encoded once, low zlib level) decode to exactly the
    rendered pixels, with their height and width; a writer that is not torch's (tensorboardX) gets
    add_image and add_histogram_raw."""
    import io

    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from lightning_stiffness.log import _write_tensorboard
    from lightning_stiffness.viz.images import measurement_images

    images = measurement_images(_measurement(), class_names=NAMES)
    images["copy/under/another/tag"] = images["stiffness/class_matrix/sign"]
    writer = SummaryWriter(str(tmp_path))
    _write_tensorboard(writer, images, {}, 3)
    writer.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    acc.Reload()
    assert sorted(acc.Tags()["images"]) == sorted(images)
    for tag, image in images.items():
        (event,) = acc.Images(tag)
        assert (event.step, event.height, event.width) == (3, image.shape[1], image.shape[2])
        decoded = torch.from_numpy(np.array(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB")))
        assert torch.equal(decoded.permute(2, 0, 1), image), tag

    class OtherWriter:  # e.g. tensorboardX: only its own methods are used
        def __init__(self) -> None:
            self.calls: list[tuple[str, int, object]] = []

        def add_image(self, tag: str, image: Tensor, global_step: int, dataformats: str) -> None:
            self.calls.append((tag, global_step, dataformats))

        def add_histogram_raw(self, tag: str, global_step: int, **histogram: object) -> None:
            self.calls.append((tag, global_step, histogram["num"]))

    other = OtherWriter()
    _write_tensorboard(other, images, {"h": torch.tensor([0.5, float("nan")]), "empty": torch.tensor([])}, 5)
    assert other.calls == [*((tag, 5, "CHW") for tag in images), ("h", 5, 1)]


def test_cosine_histogram_counts_every_finite_value(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from lightning_stiffness.log import HISTOGRAM_BUCKETS, _write_tensorboard

    uniform = torch.rand(997, generator=torch.Generator().manual_seed(0)) * 2 - 1
    values = torch.cat([uniform, torch.tensor([1.0000001, -1.0, float("nan")])])
    writer = SummaryWriter(str(tmp_path))
    _write_tensorboard(writer, {}, {"h": values, "no finite value": torch.tensor([float("nan")])}, 4)
    writer.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0})
    acc.Reload()
    assert acc.Tags()["histograms"] == ["h"]
    (event,) = acc.Histograms("h")
    h = event.histogram_value
    finite = values[torch.isfinite(values)].double()
    assert event.step == 4 and h.num == 999 and len(h.bucket) == HISTOGRAM_BUCKETS
    assert h.min == pytest.approx(float(finite.min())) and h.max == pytest.approx(float(finite.max()))
    assert h.sum == pytest.approx(float(finite.sum()))
    assert h.sum_squares == pytest.approx(float((finite * finite).sum()))
    expected, _ = np.histogram(finite.clamp(-1, 1).numpy(), bins=HISTOGRAM_BUCKETS, range=(-1, 1))
    assert list(h.bucket) == pytest.approx(expected.tolist())
    assert list(h.bucket_limit) == pytest.approx(np.linspace(-1, 1, HISTOGRAM_BUCKETS + 1)[1:].tolist())


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="needs wandb")
def test_log_images_to_wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B in offline mode: the images go through WandbLogger.log_image into the offline run file."""
    from lightning.pytorch.loggers import WandbLogger

    from lightning_stiffness.log import log_images

    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="viz-test")
    calls: list[str] = []
    original = WandbLogger.log_image

    def spy(self: WandbLogger, key: str, images: list, step: int | None = None, **kw: object) -> None:  # type: ignore[type-arg]
        calls.append(key)
        assert images[0].shape[2] == 3 and images[0].dtype.name == "uint8"
        original(self, key, images, step=step, **kw)

    monkeypatch.setattr(WandbLogger, "log_image", spy)
    try:
        assert log_images([logger], _measurement(), 0, class_names=NAMES) == ["WandbLogger"]
    finally:
        logger.experiment.finish()
    assert "stiffness/class_matrix/sign" in calls and "stiffness/class_matrix/sign/start" in calls
    media = list(tmp_path.rglob("media/images/stiffness/class_matrix/sign*.png"))
    assert media, "offline run has no class-matrix image file"


class _FakeMlflowClient:
    def __init__(self) -> None:
        self.logged: list[tuple[str, str, tuple[int, ...]]] = []

    def log_image(self, run_id: str, image: object, artifact_file: str) -> None:
        self.logged.append((run_id, artifact_file, image.shape))  # type: ignore[attr-defined]


def test_log_images_to_mlflow_through_its_client() -> None:
    """MLFlowLogger (a subclass with a recording client, so no MLflow server or package is needed):
    each image goes to ``experiment.log_image(run_id, HWC array, artifact_file)``."""
    from lightning.pytorch.loggers import MLFlowLogger

    from lightning_stiffness.log import image_loggers, log_images

    client = _FakeMlflowClient()

    class RecordingMLFlowLogger(MLFlowLogger):
        def __init__(self) -> None:  # no MLflow import, no tracking store
            pass

        @property
        def experiment(self) -> _FakeMlflowClient:  # type: ignore[override]
            return client

        @property
        def run_id(self) -> str:  # type: ignore[override]
            return "run-1"

    logger = RecordingMLFlowLogger()
    assert image_loggers([logger]) == [logger]
    assert log_images([logger], _measurement(5, "every_n_steps"), 5) == ["RecordingMLFlowLogger"]
    files = {f for _, f, _ in client.logged}
    assert "stiffness/class_matrix/sign/step_000000005.png" in files
    assert "stiffness/matrix_by_class/cos/step_000000005.png" in files
    assert all(run == "run-1" and shape[2] == 3 for run, _, shape in client.logged)
    assert not any("/start/" in f for f in files), "not a start measurement"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="needs mlflow (or mlflow-skinny)")
def test_log_images_to_a_real_mlflow_file_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.loggers import MLFlowLogger

    from lightning_stiffness.log import log_images

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 wants a database; a folder is enough here

    logger = MLFlowLogger(experiment_name="viz", tracking_uri=f"file:{tmp_path / 'mlruns'}")
    assert log_images([logger], _measurement(), 0) == ["MLFlowLogger"]
    pngs = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")}
    assert any(p.endswith("artifacts/stiffness/class_matrix/sign/step_000000000.png") for p in pngs), pngs
    assert any(p.endswith("artifacts/stiffness/class_matrix/sign/start/step_000000000.png") for p in pngs), pngs


# ---------------------------------------------------------------- line charts (PIL)


def test_nice_ticks() -> None:
    from lightning_stiffness.viz.chart import nice_ticks

    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0.13, 1.77) == [0.5, 1.0, 1.5]
    assert nice_ticks(-3.0, 27.0) == [0.0, 10.0, 20.0]


def test_line_chart_draws_points_where_the_data_are() -> None:
    from lightning_stiffness.viz.chart import PALETTE, Series, line_chart

    s = Series("within", [0.0, 1.0, 2.0], [-1.0, 0.0, 1.0], [float("nan")] * 3)
    chart = line_chart([s], title="t", xlabel="distance", ylabel="stiffness", size=(200, 100))
    left, top, right, bottom = chart.plot_box
    assert chart.texts_of("legend") == ["within"] and chart.texts_of("ytick") == ["-1", "-0.5", "0", "0.5", "1"]
    # x range padded by 4 % each side, y range [-1.05, 1.05]: the middle point (1, 0) is the plot's centre
    x, y = left + round(0.5 * (right - left - 1)), top + round(0.5 * (bottom - top - 1))
    assert tuple(chart.image[:, y, x].tolist()) == PALETTE[0]
    empty = chart.image[:, top + (bottom - top) // 4, left + 3]  # upper left: y = 0.5 near x = 0, no line
    assert tuple(empty.tolist()) == (255, 255, 255), "nothing drawn where there are no data"


def test_distance_chart_marks_bounds_as_lower_bounds() -> None:
    from pathlib import Path

    from lightning_stiffness.measurement import load_measurements
    from lightning_stiffness.viz.chart import distance_chart

    m = load_measurements(Path(__file__).parent / "fixtures" / "run-0.1.0")[-1]
    lengths = {"zero": m.critical_length("input", "sign"), "fit": m.critical_length("input", "cos", "linear_fit")}
    chart = distance_chart({"within": m.curve("input", "sign", "within")}, lengths, title="input, step 3")
    legend = chart.texts_of("legend")
    assert legend[0] == "within"
    assert f"xi zero >= {lengths['zero'].lower_bound:.3f}" in legend
    assert f"xi fit >= {lengths['fit'].lower_bound:.3f}" in legend
    assert chart.texts_of("title") == ["input, step 3"] and chart.texts_of("ylabel") == ["stiffness"]


def test_without_pillow_the_images_are_unlabelled_and_say_so_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_stiffness.viz import images, labelled
    from lightning_stiffness.viz.raster import heatmap, with_colorbar

    monkeypatch.setattr(labelled, "have_pil", lambda: False)
    monkeypatch.setattr(images, "have_pil", lambda: False)
    monkeypatch.setattr(labelled, "_warned_no_pil", False)
    m = _measurement()
    with pytest.warns(UserWarning, match="Pillow is not installed"):
        out = images.measurement_images(m)
    assert set(out) == {
        f"stiffness/{what}/{kind}" for what in ("class_matrix", "matrix_by_class") for kind in ("sign", "cos")
    }
    assert torch.equal(out["stiffness/class_matrix/cos"], with_colorbar(heatmap(m.class_cos)))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images.measurement_images(m)  # the notice is given once


def _measurement_without_classes(step: int = 0, trigger: str = "start"):  # type: ignore[no-untyped-def]
    """``analyze_without_classes``: targets that are not class labels, empty (0×0) class matrices."""
    from lightning_stiffness.analytics import AnalysisConfig, analyze_without_classes

    torch.manual_seed(0)
    n = 20
    g = torch.randn(n, 16, dtype=torch.float64) + 0.5
    x = torch.nn.functional.normalize(torch.randn(n, 5), dim=1)
    return analyze_without_classes(
        g @ g.T,
        torch.zeros(n, dtype=torch.long),
        ("train",),
        step=step,
        epoch=0,
        trigger=trigger,
        distances={"input": 1 - x @ x.T},
        config=AnalysisConfig(bins=5),
    )


def test_log_images_of_a_measurement_without_classes(tmp_path: Path) -> None:
    """Targets that are not class labels: no class-matrix images (the matrices are 0×0), the N×N
    matrices in probe order without class ticks, distance charts over all pairs; nothing fails."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_stiffness.log import log_images
    from lightning_stiffness.viz import colorize
    from lightning_stiffness.viz.images import (
        class_matrix_image,
        distance_charts,
        examples_matrix_image,
        has_class_statistics,
        measurement_images,
    )

    m = _measurement_without_classes()
    assert not m.class_statistics and m.class_sign.shape == (0, 0) and not has_class_statistics(m)
    assert has_class_statistics(_measurement())
    images = measurement_images(m, class_names=["never", "used"])
    assert set(images) == {"stiffness/matrix/sign", "stiffness/matrix/cos", "stiffness/distance/input"}
    with pytest.raises(ValueError, match="no class statistics"):
        class_matrix_image(m, "sign")
    n_by_n = examples_matrix_image(m, "cos")
    assert n_by_n.texts_of("xlabel") == ["example of g_1 (probe order)"] and not n_by_n.texts_of("xtick")
    left, top, _, _ = n_by_n.plot_box
    want = colorize(m.cos)  # probe order, 320 // 20 = 16 pixels per cell: cell (i, j) at its centre
    for i, j in ((0, 0), (3, 11), (19, 7)):
        got = n_by_n.image[:, top + 16 * i + 8, left + 16 * j + 8]
        assert torch.equal(got, want[:, i, j]), (i, j)
    chart = distance_charts(m)["stiffness/distance/input"]
    legend = chart.texts_of("legend")
    assert legend[:2] == ["sign all pairs", "cos all pairs"]
    assert not any("within" in t or "between" in t for t in legend)
    xi = m.critical_length("input", "sign")
    relation = "=" if xi.crossed else ">="
    assert f"xi sign zero_crossing {relation} {xi.bound_or_value:.3f}" in legend

    tb = TensorBoardLogger(str(tmp_path), name="tb")
    assert log_images([tb], m, 0, class_names=["never", "used"]) == ["TensorBoardLogger"]
    tb.experiment.flush()
    tags = set(_tb_images(tb.log_dir))
    assert "stiffness/matrix/sign/start" in tags and "stiffness/distance/input" in tags
    assert not any("class_matrix" in t or "matrix_by_class" in t for t in tags)


def test_report_figures_of_a_run_without_classes() -> None:
    pytest.importorskip("matplotlib")
    from lightning_stiffness.report.runs import Run
    from lightning_stiffness.viz.class_matrix import class_matrix_grid
    from lightning_stiffness.viz.curves import training_figure

    run = Run(Path("regression"), [_measurement_without_classes(0), _measurement_without_classes(5, "every_n_steps")])
    grid = class_matrix_grid(run, "sign")
    notes = [t.get_text() for ax in grid.axes for t in ax.texts]
    assert any("no data" in t and "no class statistics" in t for t in notes) and not grid.axes[0].images
    labels = training_figure(run).axes[0].get_legend_handles_labels()[1]
    assert labels == ["sign all pairs", "cos all pairs"], "no within/between lines of NaN"


def test_distance_chart_draws_a_measured_xi_solid_with_equals() -> None:
    from lightning_stiffness.viz.chart import distance_chart

    m = _measurement()
    measured = [(k, xi) for k, xi in m.critical_lengths.items() if xi.crossed]
    assert measured, "the planted measurement has a measured ξ"
    key, xi = measured[0]
    space, kind, _ = key.rsplit("/", 2)
    chart = distance_chart({"all": m.curve(space, kind, "all")}, {"est": xi})
    assert f"xi est = {xi.value:.3f}" in chart.texts_of("legend")
    left, top, right, bottom = chart.plot_box
    # the ξ line is solid: every pixel of its column inside the plot is black
    column = [
        x
        for x in range(left, right)
        if all(tuple(chart.image[:, y, x].tolist()) == (0, 0, 0) for y in range(top + 2, bottom - 2))
    ]
    assert column, "a solid vertical line at the measured ξ"


def test_report_of_a_run_without_classes_has_no_class_matrix_figures(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from lightning_stiffness.measurement import save_measurement
    from lightning_stiffness.report import write_report

    for m in (_measurement_without_classes(0), _measurement_without_classes(5, "every_n_steps")):
        save_measurement(m, tmp_path / "run")
    names = {p.name for p in write_report([tmp_path / "run"], tmp_path / "out").figures}
    assert "stiffness_over_training.png" in names and "stiffness_vs_distance.png" in names
    assert not any(n.startswith("class_matrices") for n in names)
