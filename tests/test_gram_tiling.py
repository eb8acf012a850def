"""A tiny ``memory_budget`` forces tiling in every path; tiled results equal the untiled ones."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import lightning_stiffness.gram.tiling as tiling
from lightning_stiffness.gram import per_example_gram_blocks
from tests.conftest import rel_err
from tests.zoo import ZOO

pytestmark = pytest.mark.usefixtures("single_thread")

PATHS = [("hooks", "kernel_trick"), ("hooks", "materialize"), ("hooks", "auto"), ("vmap", "auto"), ("loop", "auto")]


@pytest.fixture
def tile_log(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Record every ``(n, rows per tile)`` decision of the tiling module."""
    log: list[tuple[int, int]] = []
    original = tiling.tile_size

    def spy(n: int, bytes_per_row: float, memory_budget: float, *, squared: bool = False) -> int:
        size = original(n, bytes_per_row, memory_budget, squared=squared)
        log.append((n, size))
        return size

    monkeypatch.setattr(tiling, "tile_size", spy)
    return log


def wide_batch(name: str, n: int = 7):
    """A zoo case with more examples than the default, so tiles are uneven."""
    case = ZOO[name]()
    torch.manual_seed(100)
    x = case.inputs
    if x.is_floating_point():
        inputs = torch.randn(n, *x.shape[1:])
    else:
        inputs = torch.randint(0, int(x.max()) + 1, (n, *x.shape[1:]))
    targets = torch.randint(0, int(case.targets.max()) + 1, (n,))
    return case.model, inputs, targets


@pytest.mark.parametrize("budget", [100, 2_000])
@pytest.mark.parametrize(("method", "layer_path"), PATHS)
@pytest.mark.parametrize("name", ["mlp", "cnn", "text_conv", "tied", "raw_param"])
def test_tiny_budget_tiles_and_matches_untiled(
    name: str, method: str, layer_path: str, budget: int, tile_log: list[tuple[int, int]]
) -> None:
    model, x, y = wide_batch(name)
    n = y.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # raw_param's fallback warning
        untiled = per_example_gram_blocks(model, x, y, method=method, layer_path=layer_path)
        assert all(size == n for _, size in tile_log), "the default budget should not tile these tiny models"
        tile_log.clear()
        tiled = per_example_gram_blocks(model, x, y, method=method, layer_path=layer_path, memory_budget=budget)
    assert tile_log, "the tiling module was not used"
    if budget == 100:
        assert any(size < n for _, size in tile_log), f"budget {budget} did not force tiling: {tile_log}"
    assert tiled.paths == untiled.paths
    assert rel_err(tiled.gram, untiled.gram) <= 1e-6
    assert set(tiled.blocks) == set(untiled.blocks)
    for key, block in untiled.blocks.items():
        if block.abs().max() > 0:
            assert rel_err(tiled.blocks[key], block) <= 1e-6, key
    gram = tiled.gram.detach()
    assert torch.allclose(gram, gram.T, rtol=1e-6, atol=1e-6 * float(gram.abs().max()))


@pytest.mark.parametrize("layer_path", ["kernel_trick", "materialize"])
def test_tiling_with_one_row_per_tile_in_float64(layer_path: str, tile_log: list[tuple[int, int]]) -> None:
    """Budget 1 byte: every tile is one example; still exact in float64."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 5, 2)).double()
    x = torch.randn(5, 2, 5, dtype=torch.float64)
    y = torch.randint(0, 2, (5,))
    ref = per_example_gram_blocks(model, x, y, method="loop").gram
    tile_log.clear()
    tiled = per_example_gram_blocks(model, x, y, method="hooks", layer_path=layer_path, memory_budget=1)
    assert tile_log and all(size == 1 for _, size in tile_log)
    assert rel_err(tiled.gram, ref) <= 1e-12


def test_tile_size_respects_budget() -> None:
    assert tiling.tile_size(10, 100.0, 1_000.0) == 10
    assert tiling.tile_size(100, 100.0, 1_000.0) == 10
    assert tiling.tile_size(100, 100.0, 10_000.0, squared=True) == 10
    assert tiling.tile_size(100, 1e9, 1.0) == 1  # never zero rows
    assert tiling.tile_size(7, 0.0, 1.0) == 7
