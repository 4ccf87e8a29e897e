"""A script that sets torch's default dtype (float64 for numerics, bfloat16 to save memory) still loads and runs
checkpoints: they hold float32, and the model is rebuilt in the file's dtype, not the default one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import perceiver_torch as pt
from converters.tasks import run_upstream_layout

from .conftest import GOLDEN_TASKS as FAMILIES
from .conftest import convert_golden, golden_io


@pytest.fixture
def default_dtype():
    """Set the default dtype for one test, restoring float32 after it (a failing test included)."""
    before = torch.get_default_dtype()
    yield torch.set_default_dtype
    torch.set_default_dtype(before)


def _outputs(task: str, model, family: str) -> dict[str, np.ndarray]:
    inputs = {k.removeprefix("input/"): v for k, v in golden_io(family).items() if k.startswith("input/")}
    with torch.no_grad():
        return {k: np.asarray(v) for k, v in run_upstream_layout(task, model, inputs).items()}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("default", [torch.float64, torch.bfloat16], ids=str)
def test_a_checkpoint_loads_in_float32_whatever_the_default_dtype(tmp_path, family, default, default_dtype):
    """Every load failed as 'dtype F32; the model holds F64 (no implicit casts)', blaming a valid file. The
    outputs are those of a load under the float32 default, bit for bit (the same float32 computation)."""
    task = FAMILIES[family]
    path = convert_golden(task, family, tmp_path)
    expected = _outputs(task, pt.load_model(path), family)
    default_dtype(default)
    model = pt.load_model(path)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    got = _outputs(task, model, family)
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=f"{family} {name} under {default}")


def test_save_model_under_a_float64_default_writes_a_loadable_file(tmp_path, default_dtype):
    """save_model checks the model against a meta rebuild, which followed the default dtype too."""
    path = convert_golden("language", "language", tmp_path)
    model = pt.load_model(path)
    default_dtype(torch.float64)
    out = pt.save_model(model, tmp_path / "again.safetensors")
    assert pt.load_model(out).state_dict().keys() == model.state_dict().keys()
