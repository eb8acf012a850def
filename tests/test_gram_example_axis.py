"""The example axis of every hooked layer is found from the data, never guessed from sizes.

Three real shapes of one bug — a hooked layer whose input has leading size N without that axis
holding the examples — each at sizes where the axes coincide (``T == N``, ``M == N``) and where
they do not, against an independent float64 per-example loop (plain ``torch.autograd.grad``):

* nanoGPT-style ``wpe(torch.arange(T))``: the position table's rows are shared by all examples;
* Perceiver-style learned latent queries ``(M, d)`` through a Linear;
* ``nn.TransformerEncoderLayer`` with PyTorch's default ``batch_first=False``, seeing ``(T, N, d)``.

Also: the precision of the row methods (``vmap``, ``loop``) on a 9M-parameter model.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

import lightning_stiffness.gram.tiling as tiling
from lightning_stiffness.gram import per_example_gram, per_example_gram_blocks
from lightning_stiffness.gram.capture import CaptureRecord, ModuleCall, example_axis, resolve_example_axes
from tests.conftest import double_model, independent_gram, rel_err

pytestmark = pytest.mark.usefixtures("single_thread")

N = 4
METHODS = ["auto", "hooks", "vmap", "loop"]


class NanoGPT(nn.Module):
    """Token plus learned position embeddings, as in nanoGPT: ``wte(idx) + wpe(arange(T))``."""

    def __init__(self, vocab: int = 11, block: int = 8, d: int = 6) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(block, d)
        self.ln = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)
        self.head = nn.Linear(d, 3)

    def forward(self, idx: Tensor) -> Tensor:
        h = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        h = torch.tanh(self.fc(self.ln(h)))
        return self.head(h.mean(dim=1))


class Perceiver(nn.Module):
    """Learned latent queries ``(M, d)`` go through the Linear ``q`` and attend to the inputs."""

    def __init__(self, m: int, d: int = 6, d_in: int = 5) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(m, d))
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d_in, 2 * d)
        self.head = nn.Linear(d, 3)

    def forward(self, x: Tensor) -> Tensor:
        q = self.q(self.latents)  # (M, d): rows shared by every example
        k, v = self.kv(x).chunk(2, dim=-1)  # (N, L, d)
        att = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)  # (N, M, L)
        return self.head((att @ v).mean(dim=1))


class TimeFirst(nn.Module):
    """Batch-first inputs ``(N, T, d)`` through PyTorch's time-first encoder layer ``(T, N, d)``."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(d, nhead=2, dim_feedforward=12, dropout=0.0)
        self.head = nn.Linear(d, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.layer(x.transpose(0, 1))
        return self.head(h.mean(dim=0))


def make_case(kind: str, other: int) -> tuple[nn.Module, Tensor, Tensor]:
    """The model and a batch of ``N`` examples whose other axis (T or M) has size ``other``."""
    torch.manual_seed(0)
    y = torch.randint(0, 3, (N,))
    if kind == "nanogpt":
        return NanoGPT(), torch.randint(0, 11, (N, other)), y
    if kind == "perceiver":
        return Perceiver(m=other), torch.randn(N, 3, 5), y
    return TimeFirst(), torch.randn(N, other, 8), y


#: Per model: the parameters whose module has no example axis (to the fallback, named in the
#: warning), and those that must go through their layer rule.
EXPECTED = {
    "nanogpt": ({"wpe.weight"}, "wpe: no axis of its input", {"wte.weight", "fc.weight"}),
    "perceiver": ({"q.weight", "q.bias"}, "q: no axis of its input", {"kv.weight"}),
    "timefirst": (set(), "", {"layer.linear1.weight", "layer.linear2.weight", "layer.norm1.weight"}),
}


@pytest.mark.parametrize("other", [N, N + 1], ids=["coinciding", "distinct"])
@pytest.mark.parametrize("kind", ["nanogpt", "perceiver", "timefirst"])
@pytest.mark.parametrize("method", METHODS)
def test_gram_is_exact_whatever_sizes_coincide(kind: str, other: int, method: str) -> None:
    model, x, y = make_case(kind, other)
    ref = independent_gram(double_model(model), x.double() if x.is_floating_point() else x, y)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = per_example_gram_blocks(model, x, y, method=method)
    assert rel_err(result.gram, ref) <= 1e-5
    if method not in ("auto", "hooks"):
        return
    shared, message, by_rule = EXPECTED[kind]
    for name in shared:
        assert result.paths[name].startswith("fallback"), (name, result.paths[name])
    for name in by_rule:
        assert result.paths[name] in ("kernel_trick", "materialize", "dense"), (name, result.paths[name])
    texts = [str(w.message) for w in caught]
    if message:
        assert any(message in t for t in texts), texts


def test_time_first_encoder_layer_moves_the_example_axis() -> None:
    """At ``T == N`` the encoder layer's Linear and LayerNorm calls have two axes of size N; the
    one that follows the number of examples is axis 1, which their rules take moved to the front.
    The attention's whole-call rule reads the axis from ``batch_first``: nothing falls back."""
    model, x, y = make_case("timefirst", N)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = per_example_gram_blocks(model, x, y, method="hooks")
    assert not any(v.startswith("fallback") for v in result.paths.values()), result.paths


def test_example_axis_is_the_axis_that_follows_the_batch_size() -> None:
    # time-first with T == N: only axis 1 changes with the number of examples
    assert example_axis(((4, 4, 8), (4, 4, 3)), ((4, 1, 8), (4, 1, 3)), 4, 1) == 1
    assert example_axis(((4, 5), (4, 5, 6)), ((1, 5), (1, 5, 6)), 4, 1) == 0
    # wpe(arange(T)) / latent queries: nothing follows the batch size
    assert example_axis(((4,), (4, 6)), ((4,), (4, 6)), 4, 1) is None
    # two axes follow it (pairs of examples): no single example axis
    assert example_axis(((4, 4, 2), (4, 4, 2)), ((1, 1, 2), (1, 1, 2)), 4, 1) is None
    # input and output disagree, or the rank changed between the traces
    assert example_axis(((4, 3), (3, 4)), ((1, 3), (3, 1)), 4, 1) is None
    assert example_axis(((4, 3), (4, 3)), ((3,), (3,)), 4, 1) is None


def _pending_record(shape: tuple[int, ...]) -> CaptureRecord:
    call = ModuleCall(torch.zeros(shape), torch.zeros(shape), {}, None)
    return CaptureRecord(calls={"m": [call]})


def test_resolution_refuses_axes_a_rule_cannot_take_and_failed_traces() -> None:
    record = _pending_record((4, 4, 3))
    resolve_example_axes(record, {"m": [((4, 1, 3), (4, 1, 3))]}, 4, 1, {"m": False})
    assert "axis 1" in record.problems["m"] and "needs them on axis 0" in record.problems["m"]

    record = _pending_record((4, 4, 3))
    resolve_example_axes(record, {"m": [((4, 1, 3), (4, 1, 3))]}, 4, 1, {"m": True})
    assert not record.problems and record.calls["m"][0].axis == 1

    record = _pending_record((4, 3))
    resolve_example_axes(record, "the forward failed", 4, 1, {"m": True})
    assert record.problems["m"] == "its example axis is unknown: the forward failed"

    record = _pending_record((4, 3))
    resolve_example_axes(record, {"m": []}, 4, 1, {"m": True})
    assert "ran 1x with N=4 examples but 0x with N=1" in record.problems["m"]


class CountsExamples(nn.Module):
    """Runs ``fc`` a second time only for batches of more than one example: the shape trace
    cannot match the calls, so ``fc`` must take the fallback."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.fc(x))
        if x.shape[0] > 1:
            h = h + 0.0 * self.fc(x)  # same value, one more call
        return self.head(h)


def test_unmatched_calls_fall_back_with_a_warning() -> None:
    torch.manual_seed(0)
    model, x, y = CountsExamples(), torch.randn(5, 3), torch.randint(0, 2, (5,))
    with pytest.warns(RuntimeWarning, match=r"fc: its example axis is unknown: it ran 2x with N=5"):
        result = per_example_gram_blocks(model, x, y, method="hooks")
    assert result.paths["fc.weight"].startswith("fallback")
    assert result.paths["head.weight"] in ("kernel_trick", "materialize")


# ---- precision of the row methods on ~10M parameters ------------------------------------------


@pytest.fixture(scope="module")
def wide_mlp() -> tuple[nn.Module, Tensor, Tensor, Tensor]:
    """A 9M-parameter MLP, six examples, and their float64 Gram by the independent loop."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 2048), nn.Tanh(), nn.Linear(2048, 4096), nn.Tanh(), nn.Linear(4096, 10))
    assert sum(p.numel() for p in model.parameters()) > 8_900_000
    x, y = torch.randn(6, 256), torch.randint(0, 10, (6,))
    return model, x, y, independent_gram(double_model(model), x.double(), y)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["vmap", "loop", "auto"])
def test_row_methods_are_precise_on_9m_parameters(
    method: str, wide_mlp: tuple[nn.Module, Tensor, Tensor, Tensor]
) -> None:
    """One float32 product over 9M columns was off by 7.5e-4; chunked products summed in
    float64 meet the same 1e-5 bound as the per-layer Grams."""
    model, x, y, ref = wide_mlp
    assert rel_err(per_example_gram(model, x, y, method=method), ref) <= 1e-5


def test_inner_products_sum_chunks_in_float64() -> None:
    """Matches the float64 product over many columns, also for column counts that are not a
    multiple of the chunk, and for blocks of different rows."""
    torch.manual_seed(0)
    cols = 3 * tiling.PRODUCT_CHUNK + 17
    a, b = torch.randn(5, cols), torch.randn(3, cols)
    got = tiling.inner_products(a, b)
    assert got.dtype == torch.float32 and got.shape == (5, 3)
    assert torch.allclose(got.double(), a.double() @ b.double().T, rtol=0, atol=1e-4)
