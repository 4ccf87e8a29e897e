"""TF32 emulation (converters.parity.tf32_emulation): exact rounding, and which ops it intercepts.

TF32 keeps float32's exponent and 10 explicit mantissa bits: a unit in the last place of a value in
[1, 2) is 2**-10. The rounding is checked bit for bit, against hand-picked values and against an
independent reference built on numpy's frexp; the mode is checked by comparing each intercepted op
with float64 arithmetic on the rounded operands.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import _get_current_dispatch_mode

from converters.parity.tf32_emulation import ROUNDINGS, TF32EmulationMode, emulate_tf32, round_to_tf32

ULP = 2.0 ** -10  # TF32's unit in the last place at 1
MAX_F32 = float(np.finfo(np.float32).max)


def _bits(values) -> list[int]:
    return torch.tensor(values, dtype=torch.float32).view(torch.int32).tolist()


# value, round to nearest (ties to even), truncate (toward zero)
CASES = [
    (1 + ULP / 2, 1.0, 1.0),                                   # a tie: to the even neighbour, 1
    (1 + ULP / 2 + 2.0 ** -20, 1 + ULP, 1.0),                  # just above the tie
    (1 + 3 * ULP / 2, 1 + 2 * ULP, 1 + ULP),                   # a tie between 1 + ulp (odd) and 1 + 2 ulp
    (1 + ULP, 1 + ULP, 1 + ULP),                               # representable: untouched
    (-(1 + ULP / 2 + 2.0 ** -20), -(1 + ULP), -1.0),           # truncation is toward zero for negatives too
    (2 - 2.0 ** -23, 2.0, 2 - ULP),                            # rounding up carries into the exponent
    (MAX_F32, float("inf"), 2.0 ** 128 - 2.0 ** 117),          # beyond TF32's largest finite value
    (2.0 ** -149, 0.0, 0.0),                                   # float32's smallest denormal
    (2.0 ** -136, 2.0 ** -136, 2.0 ** -136),                   # TF32's smallest denormal
    (-0.0, -0.0, -0.0),
    (float("inf"), float("inf"), float("inf")),
    (float("-inf"), float("-inf"), float("-inf")),
]


@pytest.mark.parametrize("value, nearest, truncate", CASES)
def test_rounding_known_bit_patterns(value, nearest, truncate):
    x = torch.tensor([value], dtype=torch.float32)
    assert _bits(round_to_tf32(x, "nearest").tolist()) == _bits([nearest])
    assert _bits(round_to_tf32(x, "truncate").tolist()) == _bits([truncate])


def test_nan_passes_through_with_its_payload():
    # A NaN whose only payload bits are among the 13 dropped ones must not become inf.
    x = torch.tensor([0x7F800001, 0x7FC00000, -0x7FFFF], dtype=torch.int32).view(torch.float32)
    for rounding in ROUNDINGS:
        out = round_to_tf32(x, rounding)
        assert out.view(torch.int32).tolist() == x.view(torch.int32).tolist()


def _reference_rounding(x: np.ndarray, rounding: str) -> np.ndarray:
    """11 significant bits through frexp (x = m 2**e, 0.5 <= |m| < 1), independent of the bit tricks."""
    m, e = np.frexp(x.astype(np.float64))
    scaled = m * 2.0 ** 11
    kept = np.round(scaled) if rounding == "nearest" else np.trunc(scaled)  # np.round: ties to even
    return np.ldexp(kept / 2.0 ** 11, e).astype(np.float32)


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_rounding_matches_an_independent_reference(rounding):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(100_000, generator=gen) * torch.exp(torch.randn(100_000, generator=gen) * 20)
    x = x[torch.isfinite(x) & (x.abs() > 2.0 ** -126)]  # normal numbers (the denormals are cases above)
    got = round_to_tf32(x, rounding)
    want = _reference_rounding(x.numpy(), rounding)
    assert np.array_equal(got.numpy().view(np.int32), want.view(np.int32))
    # Every result is representable (low 13 bits clear), within half an ulp (nearest) or one ulp (truncate).
    assert not (got.view(torch.int32) & 0x1FFF).any()
    bound = 2.0 ** -11 if rounding == "nearest" else 2.0 ** -10
    assert ((got.double() - x.double()).abs() <= bound * x.double().abs()).all()
    # Representable values come back unchanged.
    assert torch.equal(round_to_tf32(got, rounding), got)


def test_rounding_arguments_are_checked():
    with pytest.raises(ValueError, match="rounding must be one of"):
        round_to_tf32(torch.ones(2), "stochastic")
    with pytest.raises(TypeError, match="float32"):
        round_to_tf32(torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="rounding must be one of"):
        TF32EmulationMode("up")


def _operands(*shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen) for shape in shapes]


def _float32_bound(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """The classical bound on a float32 dot product of length k: k u sum |a_i b_i| (u = 2**-24), doubled."""
    return 2 * k * 2.0 ** -24 * (a.double().abs() @ b.double().abs())


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_emulated_matmul_is_the_exact_product_of_rounded_inputs(rounding):
    x, w = _operands((64, 256), (256, 32))
    with emulate_tf32(rounding) as mode:
        got = x @ w
    xr, wr = round_to_tf32(x, rounding), round_to_tf32(w, rounding)
    exact = xr.double() @ wr.double()
    # float32 accumulation of the rounded products: within the float32 dot-product bound of exact.
    assert ((got.double() - exact).abs() <= _float32_bound(xr, wr, 256)).all()
    # ... and clearly away from the unrounded product (TF32's ~2**-11 relative rounding per operand):
    # more than 100x float32's own error.
    unrounded = x.double() @ w.double()
    scale = unrounded.abs().max()
    assert (got.double() - unrounded).abs().max() / scale > 1e-4
    assert ((x @ w).double() - unrounded).abs().max() / scale < 1e-6
    assert mode.rounded["mm"] == 1


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_emulated_linear_rounds_the_matrices_but_not_the_bias(rounding):
    x, w = _operands((8, 3, 128), (48, 128))
    bias = torch.full((48,), 1 + 2.0 ** -20)  # not representable in TF32: rounding it would show
    plain = F.linear(x, w, bias)
    with emulate_tf32(rounding) as mode:
        got = F.linear(x, w, bias)
        only_bias = F.linear(torch.zeros_like(x), w, bias)
    assert mode.rounded and sum(mode.rounded.values()) == 2
    assert torch.equal(only_bias, bias.expand_as(only_bias))
    xr, wr = round_to_tf32(x, rounding).double(), round_to_tf32(w, rounding).double()
    exact = xr @ wr.T + bias.double()
    bound = _float32_bound(xr.reshape(-1, 128), wr.T, 128).reshape(exact.shape) + 2.0 ** -23 * exact.abs()
    assert ((got.double() - exact).abs() <= bound).all()
    # Plain float32 and emulated TF32 differ by far more than float32's rounding (~1e-7 relative).
    assert (got - plain).abs().max() / plain.abs().max() > 1e-4


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_emulated_conv2d_rounds_input_and_weight(rounding):
    x, w, b = _operands((2, 3, 16, 16), (8, 3, 3, 3), (8,))
    plain = F.conv2d(x, w, b, stride=2, padding=1)
    with emulate_tf32(rounding) as mode:
        got = F.conv2d(x, w, b, stride=2, padding=1)
    assert mode.rounded["convolution"] == 1
    exact = F.conv2d(round_to_tf32(x, rounding).double(), round_to_tf32(w, rounding).double(), b.double(),
                     stride=2, padding=1)
    # 27 products per output: float32 accumulation is ~27 x 2**-24 relative; TF32 rounding ~2**-11.
    assert (got.double() - exact).abs().max() <= 1e-5 * exact.abs().max()
    assert (got - plain).abs().max() > 1e-4 * plain.abs().max()


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_emulated_sdpa_takes_the_math_path_and_rounds_its_products(rounding):
    q, k, v = _operands((2, 4, 32, 16), (2, 4, 48, 16), (2, 4, 48, 24))
    plain = F.scaled_dot_product_attention(q, k, v)
    with emulate_tf32(rounding) as mode:
        got = F.scaled_dot_product_attention(q, k, v)
    assert mode.rounded["bmm"] >= 2  # q k^T and weights @ v
    exact = torch.softmax(q.double() @ k.double().transpose(-1, -2) / 4.0, -1) @ v.double()
    error, plain_error = (got.double() - exact).abs().max(), (plain.double() - exact).abs().max()
    # TF32's rounding of q, k, the weights and v, not float32's: at least 100x plain float32's error,
    # yet within a few TF32 ulps of the outputs' scale.
    assert error > 100 * plain_error
    assert error < 8 * 2.0 ** -10 * exact.abs().max()


def test_a_fused_attention_kernel_inside_the_emulation_is_refused():
    q, k, v = _operands((1, 2, 8, 16), (1, 2, 8, 16), (1, 2, 8, 16))
    with emulate_tf32(), sdpa_kernel(SDPBackend.FLASH_ATTENTION), \
            pytest.raises(RuntimeError, match="fused attention kernel"):
        F.scaled_dot_product_attention(q, k, v)


def test_other_dtypes_are_left_alone():
    x, w = _operands((16, 64), (64, 8))
    with emulate_tf32() as mode:
        double = x.double() @ w.double()
        bf16 = x.bfloat16() @ w.bfloat16()
        ints = torch.arange(6).reshape(2, 3) @ torch.arange(6).reshape(3, 2)
    assert not mode.rounded
    assert torch.equal(double, x.double() @ w.double())
    assert torch.equal(bf16, x.bfloat16() @ w.bfloat16())
    assert ints.tolist() == [[10, 13], [28, 40]]


def test_nothing_leaks_after_the_context():
    x, w = _operands((32, 128), (128, 16))
    before = x @ w
    backends = (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled(),
                torch.backends.cuda.math_sdp_enabled())
    with emulate_tf32():
        assert _get_current_dispatch_mode() is not None
        assert not torch.equal(x @ w, before)
    with pytest.raises(KeyError), emulate_tf32():
        raise KeyError("an error inside the context")
    assert _get_current_dispatch_mode() is None
    assert torch.equal(x @ w, before)
    assert (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled(),
            torch.backends.cuda.math_sdp_enabled()) == backends
