"""The JAX reference is proven against DeepMind's own outputs, not assumed correct.

Every golden fixture (made by upstream's Haiku code) loads unchanged into the reference and
reproduces its outputs; `init` at each golden config yields exactly the fixture's tree, and at
each released config exactly the release's parameter paths, shapes and count.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("haiku")

import jax  # noqa: E402

import converters  # noqa: E402
from converters import jax_reference  # noqa: E402
from converters.checkpoint_reader import loads_haiku_checkpoint  # noqa: E402

from .conftest import GOLDEN_TASKS as FAMILIES  # noqa: E402
from .conftest import assert_close, golden_config, golden_dir, golden_io, released_shapes  # noqa: E402

RELEASED = {
    "language_perceiver_io_bytes": "language",
    "imagenet_learned_position_encoding": "imagenet",
    "imagenet_fourier_position_encoding": "imagenet",
    "imagenet_conv_preprocessing": "imagenet",
    "optical_flow": "optical_flow",
    "video_autoencoding": "video_autoencoding",
}
# Same code, same CPU, float32: what remains is XLA fusing/reordering sums differently from the
# version that made the fixtures, ~1e-6 on these outputs (1e-5 worst on language logits of ~10).
# A wrong path, transpose or constant shows as 1e-2 or more.
GOLDEN_TOL = 1e-5


def _golden(family):
    io = golden_io(family)
    inputs = {k.removeprefix("input/"): v for k, v in io.items() if k.startswith("input/")}
    expected = {k.removeprefix("output/"): v for k, v in io.items() if k.startswith("output/")}
    return inputs, expected


def _shapes(tree):
    return {module: {name: tuple(np.shape(x)) for name, x in leaves.items()} for module, leaves in tree.items()}


def _assert_same_tree(actual: dict, expected: dict, what: str):
    missing, extra = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
    assert not missing and not extra, f"{what}: missing modules {missing}, unexpected modules {extra}"
    wrong = {m: (actual[m], expected[m]) for m in expected if actual[m] != expected[m]}
    assert not wrong, f"{what}: (ours, expected) differ at {wrong}"


@pytest.mark.parametrize("family", FAMILIES)
def test_reproduces_golden_outputs(family):
    task, config = FAMILIES[family], golden_config(family)
    checkpoint = converters.load_haiku_checkpoint(golden_dir(family) / "checkpoint.pickle")
    inputs, expected = _golden(family)
    outputs = jax_reference.apply(task, config, checkpoint.params, checkpoint.state, inputs)
    assert sorted(outputs) == sorted(expected)
    for name, want in expected.items():
        assert outputs[name].dtype == np.float32
        assert_close(outputs[name], want, atol=GOLDEN_TOL, rtol=GOLDEN_TOL, what=f"{family} {name}")


@pytest.mark.parametrize("family", FAMILIES)
def test_init_gives_the_fixture_tree_and_checkpoint_tree_round_trips(family):
    task, config = FAMILIES[family], golden_config(family)
    golden = converters.load_haiku_checkpoint(golden_dir(family) / "checkpoint.pickle")
    inputs, _ = _golden(family)
    params, state = jax_reference.init(task, config, inputs, seed=3)
    _assert_same_tree(_shapes(params), _shapes(golden.params), f"{family} params")
    _assert_same_tree(_shapes(state), _shapes(golden.state), f"{family} state")
    for module, leaves in {**params, **state}.items():
        for name, x in leaves.items():
            assert x.dtype == {**golden.params, **golden.state}[module][name].dtype, f"{module}/{name}"

    # Perturbation reaches every parameter (zero-initialised ones included) and is seeded.
    fresh, _ = jax_reference.init(task, config, inputs, seed=3, perturb=False)
    again, _ = jax_reference.init(task, config, inputs, seed=3)
    for module, leaves in params.items():
        for name, x in leaves.items():
            assert not np.array_equal(x, fresh[module][name]), f"{module}/{name} not perturbed"
            np.testing.assert_array_equal(x, again[module][name])

    # The release pickle layout reads back through the safe reader unchanged.
    tree = jax_reference.checkpoint_tree(task, params, state)
    assert (set(tree) == {"params", "state"}) == (task == "imagenet")
    read = loads_haiku_checkpoint(pickle.dumps(tree))
    for ours, back in ((params, read.params), (state, read.state)):
        assert _shapes(back) == _shapes(ours)
        for module, leaves in ours.items():
            for name, x in leaves.items():
                np.testing.assert_array_equal(back[module][name], x)


def test_checkpoint_tree_of_a_golden_checkpoint_reads_back_identically():
    for family in ("language", "imagenet_conv"):
        golden = converters.load_haiku_checkpoint(golden_dir(family) / "checkpoint.pickle")
        tree = jax_reference.checkpoint_tree(FAMILIES[family], golden.params, golden.state)
        # Release layout: ImageNet {"params", "state"}; the others module paths at the top level.
        assert set(tree) == ({"params", "state"} if family.startswith("imagenet") else set(golden.params))
        assert converters.HaikuCheckpoint(golden.params, golden.state).flat().keys() == \
            loads_haiku_checkpoint(pickle.dumps(tree)).flat().keys()
        for key, value in loads_haiku_checkpoint(pickle.dumps(tree)).flat().items():
            np.testing.assert_array_equal(value, golden.flat()[key])
    with pytest.raises(ValueError, match="no model state"):
        jax_reference.checkpoint_tree("language", golden.params, golden.state)


@pytest.mark.parametrize("release", RELEASED)
def test_abstract_init_matches_released_shapes(release):
    """Traced with jax.eval_shape: the 201M-parameter language model allocates nothing."""
    entry = released_shapes()[release]
    params, state = jax_reference.abstract_init(RELEASED[release], entry["config"])
    _assert_same_tree(params, {m: {n: tuple(s) for n, s in v.items()} for m, v in entry["params"].items()},
                      f"{release} params")
    _assert_same_tree(state, {m: {n: tuple(s) for n, s in v.items()} for m, v in entry.get("state", {}).items()},
                      f"{release} state")
    assert sum(int(np.prod(s)) for leaves in params.values() for s in leaves.values()) == entry["num_params"]


@pytest.mark.parametrize("family", ["language", "imagenet_conv", "optical_flow", "video_autoencoding"])
def test_float64_under_x64(family):
    """Nothing pins float32: with x64 on and float64 params/inputs the whole model runs in float64."""
    task, config = FAMILIES[family], golden_config(family)
    checkpoint = converters.load_haiku_checkpoint(golden_dir(family) / "checkpoint.pickle")
    inputs, expected = _golden(family)

    def f64(tree):
        return {m: {n: x.astype(np.float64) for n, x in v.items()} for m, v in tree.items()}

    inputs = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in inputs.items()}
    with jax.enable_x64(True):
        outputs = jax_reference.apply(task, config, f64(checkpoint.params), f64(checkpoint.state), inputs)
    for name, want in expected.items():
        assert outputs[name].dtype == np.float64, name
        # Against float32 upstream outputs: float64 removes our rounding, not theirs.
        assert_close(outputs[name], want, atol=GOLDEN_TOL, rtol=GOLDEN_TOL, what=f"{family} {name} (x64)")


def test_upstream_modules_loads_a_perceiver_package_from_a_directory(tmp_path):
    """A stand-in for deepmind-research/perceiver (re-exporting ours) exercises the import path."""
    package = tmp_path / "deepmind-research" / "perceiver"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name in ("perceiver", "io_processors", "position_encoding"):
        (package / f"{name}.py").write_text(textwrap.dedent(f"""
            from converters.jax_reference.{name} import *  # noqa
            from perceiver import position_encoding as _sibling  # upstream's own import style
            LOADED_FROM_STAND_IN = True
        """))
    modules = jax_reference.upstream_modules(tmp_path / "deepmind-research")
    assert modules.perceiver.LOADED_FROM_STAND_IN
    assert modules.perceiver.__file__ == str(package / "perceiver.py")
    assert "perceiver" not in sys.modules, "the loader must not leave `perceiver` importable by name"
    assert jax_reference.upstream_modules(package).origin == str(package)  # the package dir itself works too

    config = golden_config("language")
    checkpoint = converters.load_haiku_checkpoint(golden_dir("language") / "checkpoint.pickle")
    inputs, expected = _golden("language")
    outputs = jax_reference.apply("language", config, checkpoint.params, {}, inputs, modules=modules)
    assert_close(outputs["logits"], expected["logits"], atol=GOLDEN_TOL, rtol=GOLDEN_TOL)

    with pytest.raises(FileNotFoundError, match="io_processors.py"):
        jax_reference.upstream_modules(tmp_path)


def test_example_inputs_are_valid():
    language = jax_reference.example_inputs("language", golden_config("language"), batch=3, seed=1)
    mask = language["input_mask"]
    assert mask.shape == (3, 64) and (mask.sum(1) > 0).all() and (mask.sum(1) < 64).all()  # padding in each row
    assert (language["inputs"][mask == 0] == 0).all() and (language["inputs"][mask == 1] >= 3).all()
    video = jax_reference.example_inputs("video_autoencoding", golden_config("video_autoencoding"), batch=2)
    golden, _ = _golden("video_autoencoding")
    for name in golden:  # same layout as the fixture, and the same decoding chunk (1 of nchunks)
        assert video[name].shape[1:] == golden[name].shape[1:], name
    np.testing.assert_array_equal(video["subsample_image"], golden["subsample_image"])
    np.testing.assert_array_equal(video["subsample_audio"], golden["subsample_audio"])
    with pytest.raises(ValueError, match="unknown task"):
        jax_reference.example_inputs("segmentation", {})


def test_import_without_jax_names_the_extra():
    blocker = textwrap.dedent("""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("jax", "jaxlib", "haiku"):
                    raise ImportError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, Block())
        import perceiver_torch
        assert not any(m.split(".")[0] in ("jax", "haiku") for m in sys.modules), "perceiver_torch imported jax"
        try:
            import converters.jax_reference
        except ImportError as exc:
            print(exc)
        else:
            raise SystemExit("imported without jax")
    """)
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'pip install "perceiver-torch[jax]"' in result.stdout


@pytest.mark.parametrize("initializer", [
    "TruncatedNormal(stddev=0.3, mean=0.1)",
    "VarianceScaling(2.0, 'fan_avg', 'truncated_normal')",
    "VarianceScaling(1.0, 'fan_in', 'uniform')",
    "VarianceScaling(0.5, 'fan_out', 'normal')",
])
def test_numpy_sampler_matches_haiku_initializer_distributions(initializer):
    """init() draws with numpy (XLA compiles threefry draws slowly): same distribution as Haiku's."""
    import haiku as hk

    from converters.jax_reference import initialise

    init = eval(f"hk.initializers.{initializer}")  # a literal from the list above
    shape = (3, 3, 64, 128)  # a conv kernel: fans include the receptive field
    ours = initialise.sample(init, shape, np.float32, np.random.default_rng(0))
    theirs = np.asarray(hk.transform(lambda: init(shape, np.float32)).apply({}, jax.random.PRNGKey(0)))
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    # 73,728 draws each: mean, std and quantiles (the tails show truncation) agree to sampling error.
    scale = np.std(theirs)
    assert abs(np.mean(ours) - np.mean(theirs)) < 0.02 * scale
    assert abs(np.std(ours) - scale) < 0.02 * scale
    q = [0.01, 0.1, 0.5, 0.9, 0.99]
    np.testing.assert_allclose(np.quantile(ours, q), np.quantile(theirs, q), atol=0.05 * scale)


def test_apply_runs_at_highest_matmul_precision_unless_the_caller_chose_one(monkeypatch):
    # JAX's default float32 matmul on a GPU is TF32 (~1e-3 off): every reference call outside the parity
    # harness (tests, tiny-source generation) would inherit it. Recorded from inside the compiled call.
    from converters.jax_reference import api

    seen = []

    def fake(task, config, modules, kind):
        def call(params, state, rng, inputs):
            seen.append(jax.config.jax_default_matmul_precision)
            return {}, state
        return call

    monkeypatch.setattr(api, "_compiled", fake)
    config = golden_config("language")
    api.apply("language", config, {}, {}, {})
    with jax.default_matmul_precision("tensorfloat32"):
        api.apply("language", config, {}, {}, {})
    assert seen == ["highest", "tensorfloat32"]
    assert jax.config.jax_default_matmul_precision is None  # nothing left set
