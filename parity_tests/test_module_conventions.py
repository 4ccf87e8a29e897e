"""Every task model and `PerceiverIO` behaves as an ordinary PyTorch module.

Copies, pickles, state dicts, meta-device builds, dtype casts, inference mode, autocast, functional_call,
strided inputs and threads, each checked on the golden configs (small, untrained) and on two `PerceiverIO`
models (one input, several modalities). Where the same kernels run on the same values the outputs must be
bit-identical; the few tolerances say why they are needed.
"""

from __future__ import annotations

import copy
import io
import pickle
import threading
from functools import cache

import pytest
import torch
from torch.func import functional_call

from .conftest import GOLDEN_TASKS, seeded_model
from .test_perceiver_io import multimodal_model, point_cloud_classifier

FAMILIES = sorted(GOLDEN_TASKS) + ["perceiver_io_points", "perceiver_io_multimodal"]


def _build(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "perceiver_io_points":
        model = point_cloud_classifier()
    elif family == "perceiver_io_multimodal":
        model = multimodal_model(mask_probs={"audio": 0.0, "label": 1.0, "tokens": 0.0})  # 0 and 1: deterministic
    else:
        model = seeded_model(family)
    with torch.no_grad():  # zero-initialised layers (the flow decoder's output) would make every output 0
        for p in model.parameters():
            if not p.is_meta and not p.any():
                p.normal_(0.0, 0.05)
    return model.eval()


@cache
def _cached(family: str) -> torch.nn.Module:
    return _build(family)


def model_of(family: str) -> torch.nn.Module:
    """A fresh copy of the family's model (tests may change it)."""
    return copy.deepcopy(_cached(family))


def inputs_of(family: str, model: torch.nn.Module) -> tuple:
    """Positional inputs of `model.forward`: valid values, batch 2, float32."""
    g = torch.Generator().manual_seed(1)
    config = getattr(model, "config", None)
    if family == "language":
        ids = torch.randint(0, config["vocab_size"], (2, config["max_seq_len"]), generator=g)
        mask = torch.ones_like(ids)
        mask[1, config["max_seq_len"] // 2:] = 0
        return ids, mask
    if family.startswith("imagenet"):
        return (torch.rand(2, 3, *config["image_size"], generator=g) * 4 - 2,)
    if family == "optical_flow":
        return tuple(torch.rand(2, 3, *config["train_size"], generator=g) * 2 - 1 for _ in range(2))
    if family == "video_autoencoding":
        frames, size = config["num_frames"], config["image_size"]
        samples = frames * config["audio_samples_per_frame"]
        return (torch.rand(2, frames, 3, size, size, generator=g),
                torch.rand(2, samples, 1, generator=g) * 2 - 1)
    if family == "perceiver_io_points":
        return (torch.randn(2, 64, 3, generator=g),)
    return ({"audio": torch.randn(2, 32, 1, generator=g), "label": torch.randn(2, 5, generator=g),
             "tokens": torch.randn(2, 6, 7, generator=g)},)


def reference(family: str) -> tuple[torch.nn.Module, tuple, list[torch.Tensor]]:
    """A fresh copy of the family's model, its inputs and its outputs for them: what each test compares with."""
    model = model_of(family)
    inputs = inputs_of(family, model)
    return model, inputs, forward(model, inputs)


def map_inputs(fn, inputs: tuple) -> tuple:
    """`fn` applied to every floating-point input tensor (in dicts too); integer ids are left alone."""
    def one(x):
        if isinstance(x, dict):
            return {k: one(v) for k, v in x.items()}
        return fn(x) if x.is_floating_point() else x
    return tuple(one(x) for x in inputs)


def flat(outputs) -> list[torch.Tensor]:
    return [outputs[k] for k in sorted(outputs)] if isinstance(outputs, dict) else [outputs]


def forward(model, inputs) -> list[torch.Tensor]:
    with torch.no_grad():
        return flat(model(*inputs))


def assert_identical(actual: list[torch.Tensor], expected: list[torch.Tensor], what: str) -> None:
    assert len(actual) == len(expected), what
    for a, e in zip(actual, expected, strict=True):
        assert a.dtype == e.dtype and a.shape == e.shape, f"{what}: {a.dtype} {a.shape} != {e.dtype} {e.shape}"
        assert torch.equal(a, e), f"{what}: max difference {(a.double() - e.double()).abs().max().item():.3e}"


def inputs_equal(a: tuple, b: tuple) -> bool:
    flat_a = [t for x in a for t in (x.values() if isinstance(x, dict) else [x])]
    flat_b = [t for x in b for t in (x.values() if isinstance(x, dict) else [x])]
    return all(torch.equal(x, y) for x, y in zip(flat_a, flat_b, strict=True))


@pytest.mark.parametrize("family", FAMILIES)
def test_copies_and_pickles_are_independent_models_with_the_same_outputs(family):
    model, inputs, expected = reference(family)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    copies = {"deepcopy": copy.deepcopy(model), "pickle": pickle.loads(pickle.dumps(model)),
              "torch.save": torch.load(buffer, weights_only=False)}
    for how, other in copies.items():
        assert_identical(forward(other, inputs), expected, how)
        with torch.no_grad():
            for p in other.parameters():
                p.add_(1.0)
    assert_identical(forward(model, inputs), expected, "the original after its copies were changed")


@pytest.mark.parametrize("family", FAMILIES)
def test_state_dict_loads_strictly_into_a_fresh_or_meta_built_model(family):
    model, inputs, expected = reference(family)
    state = model.state_dict()
    # Buffers are the conv stem's batch-norm averages only; nothing non-persistent is left out of the state dict.
    assert all(name.endswith(("running_mean", "running_var")) for name, _ in model.named_buffers())
    assert not [m for m in model.modules() if m._non_persistent_buffers_set]
    assert set(state) == {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    torch.manual_seed(123)  # other random weights, all replaced by the load
    fresh = _build(family)
    fresh.load_state_dict(state, strict=True)
    assert_identical(forward(fresh, inputs), expected, "fresh model")
    with torch.device("meta"):
        meta = _build(family)
    meta.to_empty(device="cpu").load_state_dict(state, strict=True)
    assert_identical(forward(meta.eval(), inputs), expected, "meta-built model")
    assigned = _build(family)
    assigned.load_state_dict(state, strict=True, assign=True)
    assert all(isinstance(p, torch.nn.Parameter) for p in assigned.parameters())
    assert_identical(forward(assigned, inputs), expected, "load_state_dict(assign=True)")


@pytest.mark.parametrize("family", FAMILIES)
def test_dtype_casts_give_outputs_in_the_expected_dtypes(family):
    model, inputs, expected = reference(family)
    wide = model_of(family).to(torch.float64)
    out = forward(wide, map_inputs(lambda x: x.double(), inputs))
    assert {o.dtype for o in out} == {torch.float64}
    for o, e in zip(out, expected, strict=True):  # float32's rounding against float64's: ~1e-7 of the range
        torch.testing.assert_close(o.float(), e, rtol=1e-4, atol=1e-4 * e.abs().max().item())
    assert_identical(forward(wide.float(), inputs), expected, "float64 and back (float32 values are exact)")
    for dtype in (torch.bfloat16, torch.float16):
        reduced = model_of(family).to(dtype)
        assert {p.dtype for p in reduced.parameters()} == {dtype}
        out = forward(reduced, inputs)
        # The final projection is a float32 island (precision.py): reduced-precision models return float32.
        assert {o.dtype for o in out} == {torch.float32} and all(o.isfinite().all() for o in out)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        built = _build(family)
    finally:
        torch.set_default_dtype(previous)
    assert {t.dtype for t in built.state_dict().values()} == {torch.float64}
    assert {o.dtype for o in forward(built, map_inputs(lambda x: x.double(), inputs))} == {torch.float64}


@pytest.mark.parametrize("family", FAMILIES)
def test_train_eval_requires_grad_and_apply_reach_every_submodule(family):
    model, inputs, expected = reference(family)
    assert all(m.training for m in model.train().modules())
    assert not any(m.training for m in model.eval().modules())
    assert not any(p.requires_grad for p in model.requires_grad_(False).parameters())
    visited = []
    model.apply(visited.append)
    assert len(visited) == len(list(model.modules()))
    assert_identical(forward(model, inputs), expected, "after train/eval/requires_grad_/apply")


@pytest.mark.parametrize("family", FAMILIES)
def test_inference_mode_autocast_and_repeats_give_the_same_outputs_and_leave_inputs_alone(family):
    model = model_of(family)
    inputs = inputs_of(family, model)
    untouched = copy.deepcopy(inputs)
    expected = forward(model, inputs)
    assert_identical(forward(model, inputs), expected, "a second eval forward")
    with torch.inference_mode():
        assert_identical(flat(model(*inputs)), expected, "inference_mode")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = flat(model(*inputs))
    for context in (torch.inference_mode, torch.no_grad):
        with context(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert_identical(flat(model(*inputs)), autocast, f"{context.__name__} under autocast")
    for o in flat(model(*inputs)):  # outputs own their memory: changing them changes nothing the next forward reads
        o.detach().fill_(float("nan"))
    assert_identical(forward(model, inputs), expected, "after the outputs were overwritten")
    # A training step (on a copy: it updates the conv stem's batch-norm averages) changes no input either.
    outputs = flat(model_of(family).train()(*inputs))
    sum(o.float().square().mean() for o in outputs).backward()
    assert inputs_equal(inputs, untouched), "forward or backward changed its inputs"


def _transposed(x: torch.Tensor) -> torch.Tensor:
    """The same values with other strides: laid out with the first and last axes swapped."""
    return x.transpose(0, -1).contiguous().transpose(0, -1) if x.ndim >= 2 else x


def _strided(x: torch.Tensor) -> torch.Tensor:
    """The same values as every other element of a wider tensor."""
    wider = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
    wider[..., ::2] = x
    return wider[..., ::2]


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    return x.contiguous(memory_format=formats[x.ndim]) if x.ndim in formats else x


@pytest.mark.parametrize("family", FAMILIES)
def test_non_contiguous_inputs_give_the_outputs_of_contiguous_ones(family):
    model, inputs, expected = reference(family)
    for layout in (_transposed, _strided, _channels_last):
        laid_out = tuple({k: layout(v) for k, v in x.items()} if isinstance(x, dict) else layout(x) for x in inputs)
        assert_identical(forward(model, laid_out), expected, layout.__name__)


@pytest.mark.parametrize("family", FAMILIES)
def test_two_threads_give_the_serial_outputs(family):
    model, inputs, expected = reference(family)
    results, errors = [], []

    def work():
        try:
            results.extend(forward(model, inputs) for _ in range(3))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 6
    for out in results:
        assert_identical(out, expected, "threaded forward")


@pytest.mark.parametrize("family", FAMILIES)
def test_frozen_and_functional_call_weights_give_the_outputs_of_the_model(family):
    # Before, a multimodal model's last projections (on strided slices of the decoder output) took a matmul
    # kernel chosen by whether the weight requires grad: frozen or detached weights differed in the last bit.
    model, inputs, expected = reference(family)
    assert_identical(forward(copy.deepcopy(model).requires_grad_(False), inputs), expected, "requires_grad_(False)")
    detached = {n: p.detach() for n, p in model.named_parameters()}
    with torch.no_grad():
        assert_identical(flat(functional_call(model, detached, inputs)), expected, "functional_call, same weights")
    scaled = {n: 1.5 * p for n, p in detached.items()}
    other = model_of(family)
    with torch.no_grad():
        for n, p in other.named_parameters():
            p.copy_(scaled[n])
        assert_identical(flat(functional_call(model, scaled, inputs)), forward(other, inputs),
                         "functional_call, other weights")
    assert_identical(forward(model, inputs), expected, "the model after functional_call")


@pytest.mark.parametrize("family", FAMILIES)
def test_narrower_float_inputs_give_the_outputs_of_the_inputs_widened(family):
    # Before, bfloat16 pixels into a float32 model had their position features (and a multimodal model its
    # padding and mask tokens) cast to bfloat16: the model silently ran part of its float32 work in bfloat16.
    model = model_of(family)
    inputs = inputs_of(family, model)
    for dtype in (torch.bfloat16, torch.float16):
        narrow = map_inputs(lambda x, dtype=dtype: x.to(dtype), inputs)
        widened = map_inputs(lambda x: x.float(), narrow)
        assert_identical(forward(model, narrow), forward(model, widened), f"{dtype} inputs")
    # Wider inputs are accepted too: the outputs keep the model's dtype; float64 position features (or the
    # layer norm's one rounding of the float64 inputs) differ from float32's by float32 rounding only.
    out, expected = forward(model, map_inputs(lambda x: x.double(), inputs)), forward(model, inputs)
    assert [o.dtype for o in out] == [e.dtype for e in expected]
    for o, e in zip(out, expected, strict=True):
        torch.testing.assert_close(o, e)


def _frozen_repeated_blocks_model() -> torch.nn.Module:
    model = model_of("imagenet_fourier").requires_grad_(False)  # autocast caches casts itself when they require grad
    assert model.encoder.num_blocks > 1  # shared weights cast once per forward: what these tests are about
    return model


def test_autocast_forward_never_swaps_the_weights_other_threads_see():
    # Before, the repeated blocks' weights cast once under autocast were swapped into the module
    # (torch.func.functional_call) for the forward: a float32 forward in another thread met bfloat16 weights, and
    # two overlapping autocast forwards left the casts in the model as its weights for good.
    model = _frozen_repeated_blocks_model()
    (images,) = inputs_of("imagenet_fourier", model)
    weights = dict(model.named_parameters())
    seen = []

    def check(*_):  # runs inside the latent blocks: what another thread sees at that moment
        seen.append({n for n, p in model.named_parameters() if p is not weights[n] or p.dtype != torch.float32})

    model.encoder.self_attends[0].norm.register_forward_hook(check)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(images)
    assert len(seen) == model.encoder.num_blocks and not any(seen), sorted(set().union(*seen))[:4]


def test_concurrent_autocast_and_float32_forwards_give_their_serial_outputs():
    model = _frozen_repeated_blocks_model()
    (images,) = inputs_of("imagenet_fourier", model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected_autocast = flat(model(images))
    expected = forward(model, (images,))
    failures = []

    def work(autocast: bool):
        try:
            for _ in range(10):
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    out = flat(model(images))
                if not all(torch.equal(o, e) for o, e in zip(out, expected_autocast if autocast else expected,
                                                            strict=True)):
                    failures.append(f"autocast={autocast}: other outputs")
        except RuntimeError as error:
            failures.append(f"autocast={autocast}: {error}")

    threads = [threading.Thread(target=work, args=(autocast,)) for autocast in (True, True, False)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]
    assert all(type(p) is torch.nn.Parameter and p.dtype == torch.float32 for p in model.parameters())


def test_a_hooked_or_subclassed_linear_layer_of_the_repeated_blocks_is_still_called():
    # The cast weights bypass the layers they belong to (F.linear); a layer with hooks, or a subclass with its own
    # forward, is called instead, at each of its uses.
    model = _frozen_repeated_blocks_model()
    (images,) = inputs_of("imagenet_fourier", model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(images)
        calls = []
        model.encoder.self_attends[0].attention.query.register_forward_hook(lambda *_: calls.append(1))
        assert torch.equal(model(images), expected)
    assert len(calls) == model.encoder.num_blocks


@pytest.mark.parametrize("family", sorted(GOLDEN_TASKS))
def test_task_models_have_transformers_num_parameters_device_and_dtype(family):
    """`model.num_parameters()`, `model.device` and `model.dtype`, as transformers' models have them."""
    model = seeded_model(family)
    params = list(model.parameters())
    assert model.num_parameters() == sum(p.numel() for p in params) > 0
    embeddings = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    assert model.num_parameters(exclude_embeddings=True) == model.num_parameters() - embeddings
    params[0].requires_grad_(False)  # frozen: not trainable
    assert model.num_parameters(only_trainable=True) == model.num_parameters() - params[0].numel()
    assert (model.device, model.dtype) == (torch.device("cpu"), torch.float32)
    assert model.to(torch.bfloat16).dtype == torch.bfloat16 and model.double().dtype == torch.float64
    assert model.to("meta").device == torch.device("meta")


def _sample(inputs: tuple, i: int) -> tuple:
    """Sample `i` of a batch of inputs, keeping a batch dimension of 1."""
    return tuple({k: v[i:i + 1] for k, v in x.items()} if isinstance(x, dict) else x[i:i + 1] for x in inputs)


@pytest.mark.parametrize("family", FAMILIES)
def test_vmap_over_samples_gives_the_batch_outputs_and_per_sample_gradients(family):
    """`torch.func.vmap`, the per-sample-gradient recipe (`vmap(grad(...))`, DP-SGD). Before, the eager value
    checks read a min/max to the host, which vmap refuses: every task model failed under it.
    Tolerance: vmap runs batched kernels where the loop runs one sample at a time, so float32 results may
    differ in the last bits (rtol 1e-4, atol 1e-5, far below any real disagreement)."""
    model, inputs, expected = reference(family)
    def one(*sample):  # vmap strips the batch dimension; the model takes a batch of 1
        return flat(model(*tuple({k: v[None] for k, v in x.items()} if isinstance(x, dict) else x[None]
                                 for x in sample)))
    with torch.no_grad():
        mapped = torch.func.vmap(one)(*inputs)
    for got, want in zip(mapped, expected, strict=True):
        torch.testing.assert_close(got.squeeze(1), want, rtol=1e-4, atol=1e-5)

    params = {n: p.detach() for n, p in model.named_parameters()}
    def loss(weights, *sample):
        batch = tuple({k: v[None] for k, v in x.items()} if isinstance(x, dict) else x[None] for x in sample)
        return sum(out.float().square().mean() for out in flat(functional_call(model, weights, batch)))
    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, *[0] * len(inputs)))(params, *inputs)
    for i in range(2):
        model.zero_grad()
        sum(out.float().square().mean() for out in flat(model(*_sample(inputs, i)))).backward()
        for name, p in model.named_parameters():
            want = p.grad if p.grad is not None else torch.zeros_like(p)
            torch.testing.assert_close(per_sample[name][i], want, rtol=1e-4, atol=1e-5,
                                       msg=lambda m, n=name: f"{n}: {m}")
