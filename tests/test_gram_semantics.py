"""Side-effect freedom and calling conventions of the Gram engine.

The Gram is a measurement: it must leave the model (training flags, ``.grad``, buffers, hooks),
the global RNG and the caller's grad/autocast mode exactly as they were, and honour ``params=``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

from lightning_stiffness.gram import per_example_gram, per_example_gram_blocks, unwrap_model
from tests.conftest import double_model, independent_gram, rel_err
from tests.zoo import ZOO

pytestmark = pytest.mark.usefixtures("single_thread")

METHODS = ["hooks", "vmap", "loop"]
ALL_METHODS = [*METHODS, "auto"]


class Boom(Exception):
    pass


def raising_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    raise Boom("loss exploded on purpose")


def flags(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def quiet_gram(model: nn.Module, inputs, targets, **kwargs) -> Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return per_example_gram(model, inputs, targets, **kwargs)


def mixed_mode_mlp():
    """The zoo MLP (Linear → ReLU(inplace) → Dropout → ...) in train mode, one child left in eval."""
    case = ZOO["mlp"]()
    case.model.train()
    case.model[4].eval()
    return case


# --------------------------------------------------------------------------- training flags


@pytest.mark.parametrize("method", ALL_METHODS)
def test_training_flags_restored(method: str) -> None:
    case = mixed_mode_mlp()
    before = flags(case.model)
    assert before[0] and not before[5]  # a genuinely mixed state
    per_example_gram(case.model, case.inputs, case.targets, method=method)
    assert flags(case.model) == before


@pytest.mark.parametrize("method", ALL_METHODS)
def test_state_restored_when_the_call_raises(method: str) -> None:
    case = mixed_mode_mlp()
    before = flags(case.model)
    with pytest.raises(Boom, match="exploded on purpose"):
        per_example_gram(case.model, case.inputs, case.targets, method=method, loss_fn=raising_loss)
    assert flags(case.model) == before
    for name, module in case.model.named_modules():
        assert not module._forward_hooks, f"hook left on {name!r}"
        assert not module._forward_pre_hooks, f"pre-hook left on {name!r}"
    # the model still works normally afterwards
    assert per_example_gram(case.model, case.inputs, case.targets, method=method).shape == (7, 7)
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("method", METHODS)
def test_dropout_model_gives_identical_results_in_train_mode(method: str) -> None:
    case = mixed_mode_mlp()
    first = per_example_gram(case.model, case.inputs, case.targets, method=method)
    second = per_example_gram(case.model, case.inputs, case.targets, method=method)
    assert torch.equal(first, second)
    case.model.eval()
    evaluated = per_example_gram(case.model, case.inputs, case.targets, method=method)
    torch.testing.assert_close(first, evaluated, rtol=1e-6, atol=0)
    independent = independent_gram(double_model(case.model), case.inputs.double(), case.targets)
    assert rel_err(first, independent) <= 1e-5


# --------------------------------------------------------------------------- no side effects


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["cnn", "raw_param"])
def test_grads_parameters_and_buffers_untouched(name: str, method: str) -> None:
    case = ZOO[name]()
    model = case.model
    model.train()  # BatchNorm in train mode would update its running statistics in a forward
    params = list(model.named_parameters())
    for i, (_, p) in enumerate(params):
        p.grad = torch.full_like(p, 0.25 + i) if i % 2 == 0 else None
    grads = {k: None if p.grad is None else p.grad.clone() for k, p in params}
    values = {k: p.detach().clone() for k, p in params}
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    quiet_gram(model, case.inputs, case.targets, method=method)
    for k, p in params:
        if grads[k] is None:
            assert p.grad is None, f"{k}.grad was written"
        else:
            assert torch.equal(p.grad, grads[k]), f"{k}.grad changed"
        assert torch.equal(p.detach(), values[k]), f"{k} changed"
        assert p.requires_grad
    for k, b in model.named_buffers():
        assert torch.equal(b, buffers[k]), f"buffer {k} changed"


class NoisyNet(nn.Module):
    """Draws from the global RNG in every forward without affecting the output."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = x + 0.0 * torch.rand(x.shape[-1])
        return self.fc2(torch.tanh(self.fc1(x)))


@pytest.mark.parametrize("method", ["auto", "hooks", "loop"])
def test_max_norm_embedding_weights_are_restored(method: str) -> None:
    """``Embedding(max_norm=…)`` renormalises looked-up rows in place during the forward; the
    probe's forward must not leave that change in the model being trained."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4, max_norm=0.5), nn.Flatten(), nn.Linear(12, 3))
    before = model[0].weight.detach().clone()
    x, y = torch.randint(0, 10, (5, 3)), torch.arange(5) % 3
    gram = per_example_gram(model, x, y, method=method)
    assert torch.equal(model[0].weight, before)
    reference = per_example_gram(model, x, y, method="loop")
    assert rel_err(gram, reference) <= 1e-6


def test_other_in_place_parameter_writes_are_reported() -> None:
    class WritesItsWeight(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: Tensor) -> Tensor:
            with torch.no_grad():
                self.fc.weight.mul_(1.0)
            return self.fc(x)

    with pytest.warns(RuntimeWarning, match=r"changed parameters \['fc.weight'\] in place"):
        per_example_gram(WritesItsWeight(), torch.randn(4, 4), torch.arange(4) % 3)


@pytest.mark.parametrize("method", ["hooks", "loop", "auto"])
def test_global_rng_state_unchanged(method: str) -> None:
    torch.manual_seed(0)
    model = NoisyNet()
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    state = torch.get_rng_state()
    model(x)
    assert not torch.equal(state, torch.get_rng_state()), "the model must consume random numbers"
    state = torch.get_rng_state()
    gram = per_example_gram(model, x, y, method=method)
    assert torch.equal(state, torch.get_rng_state())
    assert rel_err(gram, independent_gram(double_model(model), x.double(), y)) <= 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_dropout_model_leaves_rng_state_unchanged(method: str) -> None:
    case = mixed_mode_mlp()
    state = torch.get_rng_state()
    per_example_gram(case.model, case.inputs, case.targets, method=method)
    assert torch.equal(state, torch.get_rng_state())


# --------------------------------------------------------------------------- caller's modes


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["cnn", "text_conv"])
def test_works_inside_inference_mode_with_inference_inputs(name: str, method: str) -> None:
    case = ZOO[name]()
    plain = per_example_gram(case.model, case.inputs, case.targets, method=method)
    with torch.inference_mode():
        inputs = case.inputs.clone()
        targets = case.targets.clone()
        assert inputs.is_inference()
        gram = per_example_gram(case.model, inputs, targets, method=method)
        assert torch.is_inference_mode_enabled()
    torch.testing.assert_close(gram, plain, rtol=1e-6, atol=0)


@pytest.mark.parametrize("method", METHODS)
def test_works_inside_no_grad(method: str) -> None:
    case = ZOO["cnn"]()
    plain = per_example_gram(case.model, case.inputs, case.targets, method=method)
    with torch.no_grad():
        gram = per_example_gram(case.model, case.inputs, case.targets, method=method)
        assert not torch.is_grad_enabled()
    torch.testing.assert_close(gram, plain, rtol=1e-6, atol=0)


@pytest.mark.parametrize("method", METHODS)
def test_autocast_is_disabled_inside(method: str) -> None:
    case = ZOO["cnn"]()
    plain = per_example_gram(case.model, case.inputs, case.targets, method=method)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert case.model.fc(torch.randn(2, 6)).dtype == torch.bfloat16  # autocast is really on
        gram = per_example_gram(case.model, case.inputs, case.targets, method=method)
        assert torch.is_autocast_enabled("cpu")
    assert gram.dtype == torch.float32
    torch.testing.assert_close(gram, plain, rtol=1e-6, atol=0)


# --------------------------------------------------------------------------- params=


def _subset_specs(model: nn.Sequential) -> dict[str, tuple[object, list[str]]]:
    return {
        "param_names": (["3.weight", "5.bias"], ["3.weight", "5.bias"]),
        "module_name": ("3", ["3.weight", "3.bias"]),
        "parameter_objects": ([model[5].weight, model[0].bias], ["0.bias", "5.weight"]),
        "module_object": (model[5], ["5.weight", "5.bias"]),
        "single_parameter": (model[0].weight, ["0.weight"]),
        "mixed": (["0.bias", model[3], model[5].weight], ["0.bias", "3.weight", "3.bias", "5.weight"]),
    }


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "spec", ["param_names", "module_name", "parameter_objects", "module_object", "single_parameter", "mixed"]
)
def test_params_restriction(spec: str, method: str) -> None:
    case = ZOO["mlp"]()
    model = case.model
    params, expected = _subset_specs(model)[spec]
    named = dict(model.named_parameters())
    fired: dict[str, int] = dict.fromkeys(named, 0)
    handles = []
    for k, p in named.items():

        def count(grad: Tensor, k: str = k) -> None:
            fired[k] += 1

        handles.append(p.register_hook(count))
    try:
        result = per_example_gram_blocks(model, case.inputs, case.targets, method=method, params=params)
    finally:
        for h in handles:
            h.remove()
    assert list(result.paths) == expected
    assert set(result.blocks) == {k.rpartition(".")[0] for k in expected}
    others = [k for k in named if k not in expected]
    assert all(fired[k] == 0 for k in others), f"gradients reached unselected parameters: {fired}"
    # the Gram of exactly that subset, against plain autograd over the same parameters
    dmodel = double_model(model)
    dnamed = dict(dmodel.named_parameters())
    ref = independent_gram(dmodel, case.inputs.double(), case.targets, [dnamed[k] for k in expected])
    assert rel_err(result.gram, ref) <= 1e-5
    full = independent_gram(dmodel, case.inputs.double(), case.targets)
    assert rel_err(full, ref) > 1e-3  # the restriction is visible


@pytest.mark.parametrize("method", ["hooks", "vmap", "loop"])
@pytest.mark.parametrize(
    ("name", "params"), [("mlp", None), ("mlp", "5"), ("raw_param", None), ("functional_tied", None)]
)
def test_gram_is_detached_from_the_autograd_graph(name: str, method: str, params: str | None) -> None:
    """The Gram is a measurement: no graph back into the model (it would keep activations alive
    and let ``gram.backward()`` write ``.grad`` into the parameters)."""
    case = ZOO[name]()
    result = per_example_gram_blocks(case.model, case.inputs, case.targets, method=method, params=params)
    assert not result.gram.requires_grad and result.gram.grad_fn is None
    for key, block in result.blocks.items():
        assert not block.requires_grad, f"block {key!r} is attached to the graph"


@pytest.mark.parametrize("method", METHODS)
def test_blocks_are_keyed_by_module_and_equal_the_module_grams(method: str) -> None:
    case = ZOO["cnn"]()
    result = per_example_gram_blocks(case.model, case.inputs, case.targets, method=method)
    assert set(result.blocks) == {"c1", "bn", "c2", "dw", "c3", "gn", "fc"}
    for module_name, block in result.blocks.items():
        alone = per_example_gram(case.model, case.inputs, case.targets, method=method, params=module_name)
        assert rel_err(block, alone) <= 1e-6, module_name
    # blocks genuinely differ from each other (not one total copied around)
    assert rel_err(result.blocks["c1"], result.blocks["fc"]) > 1e-2


@pytest.mark.parametrize("method", ["hooks", "vmap", "loop"])
def test_root_parameter_block_is_named_after_the_parameter(method: str) -> None:
    case = ZOO["raw_param"]()
    result = per_example_gram_blocks(case.model, case.inputs, case.targets, method=method)
    assert set(result.blocks) == {"scale", "fc"}
    dmodel = double_model(case.model)
    scale_only = independent_gram(dmodel, case.inputs.double(), case.targets, [dmodel.scale])
    assert scale_only.abs().max() > 0
    assert rel_err(result.blocks["scale"], scale_only) <= 1e-5


# --------------------------------------------------------------------------- wrappers


class CompiledLike(nn.Module):
    """Stands in for ``torch.compile``'s OptimizedModule: the real module under ``_orig_mod``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self._orig_mod = inner

    def forward(self, *args, **kwargs):
        raise AssertionError("the wrapper must be unwrapped, not called")


class DistributedDataParallel(nn.Module):
    """Stands in for DDP: the real module under ``.module``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.module = inner

    def forward(self, *args, **kwargs):
        raise AssertionError("the wrapper must be unwrapped, not called")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("wrap", ["compiled", "nested", "ddp"])
def test_wrappers_are_unwrapped(wrap: str, method: str) -> None:
    case = ZOO["mlp"]()
    wrapped: nn.Module = {
        "compiled": lambda m: CompiledLike(m),
        "nested": lambda m: CompiledLike(CompiledLike(m)),
        "ddp": lambda m: DistributedDataParallel(m),
    }[wrap](case.model)
    assert unwrap_model(wrapped) is case.model
    direct = per_example_gram_blocks(case.model, case.inputs, case.targets, method=method)
    result = per_example_gram_blocks(wrapped, case.inputs, case.targets, method=method, params="3")
    assert set(result.paths) == {"3.weight", "3.bias"}  # names relative to the unwrapped model
    assert set(result.blocks) == {"3"}
    assert rel_err(result.gram, direct.blocks["3"]) <= 1e-6
    full = per_example_gram_blocks(wrapped, case.inputs, case.targets, method=method)
    assert set(full.blocks) == set(direct.blocks) == {"0", "3", "5"}
    assert torch.equal(full.gram, direct.gram)


class InnerWrapper(nn.Module):
    """Holds its module under ``_fsdp_wrapped_module`` and calls it, as FSDP1 units do."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self._fsdp_wrapped_module = inner

    def forward(self, *args, **kwargs):
        return self._fsdp_wrapped_module(*args, **kwargs)


@pytest.mark.parametrize("method", METHODS)
def test_names_inside_wrappers_are_reported_without_wrapper_segments(method: str) -> None:
    """Wrappers that stay in the call path (FSDP1 units) add name segments; results and ``params=``
    use the names of the unwrapped model, and the vmap/loop paths still find the real parameters."""
    case = ZOO["mlp"]()
    direct = per_example_gram_blocks(case.model, case.inputs, case.targets, method=method)
    case.model[3] = InnerWrapper(case.model[3])
    wrapped = InnerWrapper(case.model)
    assert "_fsdp_wrapped_module.3._fsdp_wrapped_module.weight" in dict(wrapped.named_parameters())
    result = per_example_gram_blocks(wrapped, case.inputs, case.targets, method=method)
    assert set(result.blocks) == {"0", "3", "5"}
    assert {"3.weight", "3.bias"} <= set(result.paths)
    assert rel_err(result.gram, direct.gram) <= 1e-6
    only = per_example_gram_blocks(wrapped, case.inputs, case.targets, method=method, params=["3", "5.bias"])
    assert set(only.paths) == {"3.weight", "3.bias", "5.bias"}
    assert rel_err(only.blocks["3"], direct.blocks["3"]) <= 1e-6


class CheckpointedNet(nn.Module):
    """A block under ``torch.utils.checkpoint`` (non-reentrant) and one under Lightning/FSDP's
    ``checkpoint_wrapper``: activations are recomputed in the backward, hooks fire twice."""

    def __init__(self) -> None:
        super().__init__()
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        self.block = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8))
        self.wrapped = checkpoint_wrapper(nn.Sequential(nn.Linear(8, 8), nn.ReLU()))
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.utils.checkpoint.checkpoint(self.block, x, use_reentrant=False)
        return self.head(self.wrapped(h))


@pytest.mark.parametrize("method", ["hooks", "auto"])
def test_activation_checkpointing_is_exact_without_fallback(method: str) -> None:
    """torch.func cannot differentiate through checkpointing's saved-tensor hooks; the kernel
    engine needs only one backward to the layer outputs, so it stays exact and on its fast path."""
    torch.manual_seed(0)
    model = CheckpointedNet()
    x, y = torch.randn(7, 6), torch.arange(7) % 3
    reference = independent_gram(double_model(model), x.double(), y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback
        result = per_example_gram_blocks(model, x, y, method=method)
    assert rel_err(result.gram, reference) <= 1e-5
    assert set(result.blocks) == {"block.0", "block.2", "wrapped.0", "head"}
    assert not any(s.startswith("fallback") for s in result.paths.values())


# --------------------------------------------------------------------------- in-place ops


@pytest.mark.parametrize("layer_path", ["kernel_trick", "materialize"])
def test_inplace_relu_after_linear_and_conv_is_exact(layer_path: str) -> None:
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv1d(2, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(4 * 6, 8),
        nn.ReLU(inplace=True),
        nn.Linear(8, 3),
    ).double()
    x, y = torch.randn(6, 2, 6, dtype=torch.float64), torch.randint(0, 3, (6,))
    result = per_example_gram_blocks(model, x, y, method="hooks", layer_path=layer_path)
    assert result.paths["0.weight"] == layer_path
    assert result.paths["3.weight"] == layer_path
    assert rel_err(result.gram, independent_gram(model, x, y)) <= 1e-10


def test_an_overwritten_output_is_seen_and_remembered_and_the_rest_differentiate_outputs() -> None:
    """Outputs are differentiated directly unless a later op overwrites them in place (here an
    in-place ReLU and a loss that scales the logits in place): the capture sees the overwrite by
    the version counter, repeats itself once with zero tensors on those modules, and remembers
    them, so later calls capture once; every Gram stays exact."""
    from lightning_stiffness.gram import capture

    def scaling_loss(out: Tensor, y: Tensor) -> Tensor:
        return nn.functional.cross_entropy(out.mul_(2.0), y, reduction="none")

    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(7, 4), torch.arange(7) % 3
    reference = independent_gram(double_model(model), x.double(), y, loss_fn=scaling_loss)
    captures = []
    original = capture.capture_calls

    def counting(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        captures.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    import lightning_stiffness.gram.hooks as hooks_module

    hooks_module.capture_calls = counting  # type: ignore[assignment]
    try:
        first = per_example_gram(model, x, y, method="hooks", loss_fn=scaling_loss)
        assert len(captures) == 2, "the overwrite is found after the first capture, which is repeated once"
        second = per_example_gram(model, x, y, method="hooks", loss_fn=scaling_loss)
        assert len(captures) == 3, "remembered: one capture per later call"
    finally:
        hooks_module.capture_calls = original  # type: ignore[assignment]
    assert model[0] in capture.OUTPUT_OVERWRITTEN and model[4] in capture.OUTPUT_OVERWRITTEN
    assert model[2] not in capture.OUTPUT_OVERWRITTEN  # Tanh is out of place
    assert rel_err(first, reference) <= 1e-5 and rel_err(second, reference) <= 1e-5
