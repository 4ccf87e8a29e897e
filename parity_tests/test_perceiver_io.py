"""The generic PerceiverIO API and the multimodal parts it is built from."""

import re
from pathlib import Path

import pytest
import torch

from perceiver_torch import PerceiverIO
from perceiver_torch.layers import (
    AudioPostprocessor,
    AudioPreprocessor,
    ClassificationPostprocessor,
    IdentityPreprocessor,
    MultimodalPreprocessor,
    OneHotPreprocessor,
    ProjectionPostprocessor,
    QueryGenerator,
    restructure,
)

from .training import train_classifier


def point_cloud_classifier(num_classes=4):
    # The README's custom-task example.
    return PerceiverIO(
        num_blocks=1, num_self_attends_per_block=2, num_latents=16, num_latent_channels=32,
        perceiver_encoder_kwargs=dict(num_self_attend_heads=4),
        input_channels=3,  # raw xyz points [B, N, 3], no preprocessor
        output_queries=QueryGenerator("trainable", (1,), trainable_position_encoding_kwargs=dict(num_channels=32)),
        output_postprocessors=ClassificationPostprocessor(32, num_classes),
    )


def test_readme_point_cloud_example_trains():
    torch.manual_seed(0)
    model = point_cloud_classifier()
    # Four classes of clouds: blobs around four different centres.
    labels = torch.arange(32) % 4
    centres = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]])
    points = 0.3 * torch.randn(32, 64, 3) + centres[labels][:, None]
    losses = train_classifier(model, points, labels, steps=30, lr=3e-3)
    assert losses[-1] < 0.1 * losses[0]


def test_readme_custom_task_example_runs_and_learns():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"<!-- custom-task-example .*?-->\n```python\n(.*?)```", readme, re.S)
    assert block, "README custom-task example not found"
    torch.manual_seed(0)
    namespace = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)
    model, points, labels = namespace["model"], namespace["points"], namespace["labels"]
    with torch.no_grad():
        final = torch.nn.functional.cross_entropy(model(points), labels).item()
    assert final < 0.1 * torch.log(torch.tensor(4.0)).item()


def multimodal_model(mask_probs=None):
    return PerceiverIO(
        num_blocks=2, num_self_attends_per_block=1, num_latents=8, num_latent_channels=16,
        final_project_out_channels=12,
        perceiver_encoder_kwargs=dict(num_self_attend_heads=2),
        input_preprocessors={
            "audio": AudioPreprocessor(samples_per_patch=4, fourier_position_encoding_kwargs=dict(
                num_bands=3, max_resolution=(32,), concat_pos=True, sine_only=False)),
            "label": OneHotPreprocessor(5),
        },
        input_channels={"tokens": 7},
        input_mask_probs=mask_probs,
        input_padding_channels=3,
        output_queries={
            "audio": QueryGenerator("fourier", (8,), fourier_position_encoding_kwargs=dict(
                num_bands=2, max_resolution=(32,), concat_pos=True, sine_only=False)),
            "label": QueryGenerator("trainable", (1,), trainable_position_encoding_kwargs=dict(num_channels=9)),
            "tokens": QueryGenerator("trainable", (6,), trainable_position_encoding_kwargs=dict(num_channels=4)),
        },
        output_query_padding_channels=2,
        output_postprocessors={
            "audio": AudioPostprocessor(12, samples_per_patch=4),
            "label": ClassificationPostprocessor(12, 5),
            "tokens": ProjectionPostprocessor(12, 7),
        },
    )


def multimodal_inputs(batch=3):
    return {"audio": torch.randn(batch, 32, 1), "label": torch.randn(batch, 5), "tokens": torch.randn(batch, 6, 7)}


def test_several_modalities_forward_and_backward():
    torch.manual_seed(0)
    model = multimodal_model(mask_probs={"audio": 0.0, "label": 1.0, "tokens": 0.3})
    out = model(multimodal_inputs())
    assert set(out) == {"audio", "label", "tokens"}
    assert out["audio"].shape == (3, 32) and out["label"].shape == (3, 5) and out["tokens"].shape == (3, 6, 7)
    sum(o.square().mean() for o in out.values()).backward()
    for name, p in model.named_parameters():
        # The label is always masked (its padding never reaches the encoder), audio never (its mask token is unused).
        unused = {"input_preprocessor.padding.label.embeddings", "input_preprocessor.mask_tokens.audio.embeddings"}
        assert (p.grad is None) == (name in unused), name
    # Subsampled decoding: a Fourier modality keeps only the asked points; trainable tables are used whole.
    with torch.no_grad():
        part = model(multimodal_inputs(), subsampled_output_points={"audio": torch.tensor([1, 5])})
    assert part["audio"].shape == (3, 8) and part["tokens"].shape == (3, 6, 7)


def test_subsampled_chunks_equal_decoding_all_points_subsampled():
    # As upstream, subsampled Fourier queries sit at -1 + 2 * i / n, while the unsubsampled grid is
    # linspace(-1, 1, n): chunks concatenate to the all-points *subsampled* decoding.
    torch.manual_seed(0)
    model = multimodal_model().eval()
    inputs = multimodal_inputs()
    with torch.no_grad():
        full = model(inputs, subsampled_output_points={"audio": torch.arange(8)})
        z, sizes, flat, without_pos = model.encode(inputs)
        halves = [model.decode(z, flat, sizes, without_pos, {"audio": torch.arange(i * 4, i * 4 + 4)})
                  for i in range(2)]
    torch.testing.assert_close(torch.cat([h["audio"] for h in halves], dim=1), full["audio"])
    torch.testing.assert_close(halves[1]["label"], full["label"])


def test_mask_probabilities_zero_and_one_are_deterministic():
    torch.manual_seed(0)
    pre = MultimodalPreprocessor({"a": OneHotPreprocessor(3), "b": OneHotPreprocessor(5)},
                                 mask_probs={"a": 0.0, "b": 1.0}, min_padding_size=4)
    x = {"a": torch.randn(2, 3), "b": torch.randn(2, 5)}
    out, sizes, _ = pre(x)
    assert sizes == {"a": 1, "b": 1} and out.shape == (2, 2, 9)
    assert torch.equal(out[:, 0, :3], x["a"]) and torch.equal(out[:, 0, 3:], pre.padding["a"].embeddings.expand(2, -1))
    assert torch.equal(out[:, 1], pre.mask_tokens["b"].embeddings.expand(2, -1))
    # Intermediate probabilities draw from the generator: reproducible with a seed.
    pre.generator = torch.Generator().manual_seed(1)
    half = {"a": 0.5, "b": 0.5}
    first = pre(x, mask_probs=half)[0]
    pre.generator.manual_seed(1)
    assert torch.equal(first, pre(x, mask_probs=half)[0])



@pytest.mark.parametrize("training", [True, False])  # upstream masks regardless of is_training
def test_intermediate_mask_probabilities_mask_that_fraction_of_positions(training):
    torch.manual_seed(0)
    pre = MultimodalPreprocessor({"a": IdentityPreprocessor(4), "b": IdentityPreprocessor(6)},
                                 mask_probs={"a": 0.3, "b": 0.8}).train(training)
    pre.generator = torch.Generator().manual_seed(2)
    x = {"a": torch.randn(2, 10_000, 4), "b": torch.randn(2, 5_000, 6)}
    with torch.no_grad():
        out, sizes, _ = pre(x)
    assert sizes == {"a": 10_000, "b": 5_000} and out.shape == (2, 15_000, 8)
    parts = {"a": out[:, :10_000], "b": out[:, 10_000:]}
    for name, prob in (("a", 0.3), ("b", 0.8)):
        got = parts[name]
        token = pre.mask_tokens[name].embeddings  # [1, 8]
        padded = torch.cat([x[name], pre.padding[name].embeddings.expand(*x[name].shape[:2], -1)], dim=-1)
        masked = (got == token).all(-1)
        kept = (got == padded).all(-1)
        # Every position is exactly the mask token or exactly its own (padded) input, never a mix or both
        # (random normal inputs never equal the token).
        assert bool((masked ^ kept).all()), name
        n = masked.numel()
        bound = 5 * (prob * (1 - prob) / n) ** 0.5  # 5 binomial standard deviations: fails by chance < 1e-6
        fraction = masked.float().mean().item()
        assert abs(fraction - prob) < bound, f"{name}: masked {fraction:.4f} of {n} positions, expected {prob}"


def test_restructure_splits_in_sorted_order():
    x = torch.arange(6).reshape(1, 6, 1)
    parts = restructure({"b": 2, "a": 4}, x)
    assert list(parts) == ["a", "b"] and parts["a"].flatten().tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="cannot split 6 positions"):
        restructure({"a": 2}, x)


def test_clear_errors():
    model = multimodal_model()
    with pytest.raises(ValueError, match="missing \\['tokens'\\]"):
        model({"audio": torch.randn(1, 32, 1), "label": torch.randn(1, 5)})
    with pytest.raises(ValueError, match="not a multiple of samples_per_patch"):
        model({**multimodal_inputs(1), "audio": torch.randn(1, 30, 1)})
    with pytest.raises(ValueError, match="expected \\[B, N, 7\\]"):
        model({**multimodal_inputs(1), "tokens": torch.randn(1, 6, 8)})
    with pytest.raises(ValueError, match="output_queries is required"):
        PerceiverIO(input_channels=3)
    with pytest.raises(TypeError, match="pass a dict"):
        model(torch.randn(1, 32, 1))


def test_inputs_and_masks_are_checked_before_they_reach_torch_internals():
    torch.manual_seed(0)
    model, points = point_cloud_classifier().eval(), torch.randn(2, 64, 3)
    with pytest.raises(ValueError, match=r"PerceiverIO.forward: inputs must have B >= 1; got an empty batch"):
        model(torch.randn(0, 64, 3))
    with pytest.raises(TypeError, match=r"inputs must be a tensor \[B, \.\.\.\]; got list"):
        model([[0.0, 1.0, 2.0]])
    with pytest.raises(ValueError, match=r"input_mask must be \[B, N\] = \[2, 64\], one flag per input position"):
        model(points, input_mask=torch.ones(2, 63))
    with pytest.raises(ValueError, match=r"input_mask must be a tensor \[B=2, L\] of 0/1 .* got float32 \[3, 64\]"):
        model(points, input_mask=torch.ones(3, 64))
    with pytest.raises(ValueError, match=r"got other values \(the mask is binary"):
        model(points, input_mask=torch.full((2, 64), 0.5))
    with pytest.raises(TypeError, match=r"query_mask must be a tensor .* got list"):
        model(points, query_mask=[[1]])
    with pytest.raises(ValueError, match=r"query_mask must be \[B, M\] = \[2, 1\], one flag per output query"):
        model(points, query_mask=torch.ones(2, 2))
    with torch.no_grad():  # a valid mask of each dtype gives the same result
        expected = model(points, input_mask=torch.ones(2, 64))
        for mask in (torch.ones(2, 64, dtype=torch.bool), torch.ones(2, 64, dtype=torch.long)):
            torch.testing.assert_close(model(points, input_mask=mask, query_mask=mask[:, :1]), expected,
                                       rtol=0, atol=0)
    multimodal = multimodal_model()
    with pytest.raises(ValueError, match=r"same batch size; got inputs\['audio'\] 2, inputs\['label'\] 1, "
                                         r"inputs\['tokens'\] 2"):
        multimodal({**multimodal_inputs(2), "label": torch.randn(1, 5)})


def test_inputs_none_is_refused_by_name():
    # It failed with "'NoneType' object has no attribute 'items'".
    with pytest.raises(TypeError, match=r"PerceiverIO.forward: inputs must be a tensor \[B, \.\.\.\]; got NoneType"):
        point_cloud_classifier()(None)
    with pytest.raises(TypeError, match=r"inputs must be a dict of tensors \[B, \.\.\.\] per input modality; "
                                        r"got NoneType"):
        multimodal_model()(None)


def test_subsampled_points_on_the_host_reach_a_model_on_another_device():
    # meta stands in for an accelerator: indices made on the host are moved to the model's device.
    torch.manual_seed(0)
    model = multimodal_model().eval().to("meta")
    inputs = {k: v.to("meta") for k, v in multimodal_inputs(2).items()}
    with torch.no_grad():
        out = model(inputs, subsampled_output_points={"audio": torch.tensor([1, 5])})
    assert out["audio"].device.type == "meta" and out["audio"].shape == (2, 8)


@pytest.mark.parametrize("points, message", [
    # Each was decoded silently: indices become Fourier query positions by arithmetic, so nothing failed.
    ({"audio": torch.tensor([1, 100])}, r"\['audio'\] indices must lie in \[0, 8\); got values in \[1, 100\]"),
    ({"audio": torch.tensor([-1, 3])}, r"\['audio'\] indices must lie in \[0, 8\); got values in \[-1, 3\]"),
    ({"tokens": torch.tensor([6])}, r"\['tokens'\] indices must lie in \[0, 6\)"),
    ({"audio": torch.tensor([1.0, 2.0])}, r"\['audio'\] must be a 1-D integer tensor of query indices; got float32"),
    ({"audio": torch.tensor([True, False])}, r"\['audio'\] must be a 1-D integer .* got bool \[2\]"),
    # These reached torch internals (a split of the wrong size, an expand of -1, 'str' has no attribute 'to').
    ({"audio": torch.tensor([[1, 2]])}, r"\['audio'\] must be a 1-D integer .* got int64 \[1, 2\]"),
    ({"audio": torch.tensor(3)}, r"\['audio'\] must be a 1-D integer .* got int64 \[\]"),
    ({"audio": "15"}, r"\['audio'\] must be a 1-D integer .* got str"),
    ({"video": torch.tensor([1])}, r" for unknown output modalities \['video'\]; expected some of \['audio', "),
])
def test_subsampled_output_points_are_checked_by_name(points, message):
    model = multimodal_model().eval()
    with pytest.raises(ValueError, match=r"^PerceiverIO.forward: subsampled_output_points" + message):
        model(multimodal_inputs(2), subsampled_output_points=points)


def test_subsampled_output_points_of_a_single_output_are_named_without_a_key():
    with pytest.raises(ValueError, match=r"^PerceiverIO.forward: subsampled_output_points indices must lie in "
                                         r"\[0, 1\); got values in \[1, 1\]"):
        point_cloud_classifier()(torch.randn(2, 64, 3), subsampled_output_points=torch.tensor([1]))


def test_subsampled_output_points_are_checked_without_a_host_read_where_values_are_not_readable(monkeypatch):
    # On an accelerator or traced, forward may not read values: torch._assert_async checks them without a sync
    # (on the CPU it raises at once; on CUDA it is a device-side assert).
    from perceiver_torch.models import input_checks

    torch.manual_seed(0)
    model, inputs = multimodal_model().eval(), multimodal_inputs(2)
    monkeypatch.setattr(input_checks, "values_readable", lambda tensor, **_: False)
    with torch.no_grad():
        expected = model(inputs, subsampled_output_points={"audio": torch.tensor([1, 5])})
        with pytest.raises(RuntimeError, match=r"subsampled_output_points\['audio'\] indices must lie in \[0, 8\)"):
            model(inputs, subsampled_output_points={"audio": torch.tensor([1, 8])})
        # Indices given as a list are taken as the tensor of them.
        same = model(inputs, subsampled_output_points={"audio": [1, 5]})
    for name in expected:
        torch.testing.assert_close(same[name], expected[name], rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, error, message", [
    # Built silently: no latent self-attention at all, or one block for True.
    (dict(num_blocks=0), ValueError, r"num_blocks must be an integer >= 1; got 0"),
    (dict(num_blocks=-1), ValueError, r"num_blocks must be an integer >= 1; got -1"),
    (dict(num_blocks=True), ValueError, r"num_blocks must be an integer >= 1; got True"),
    (dict(num_self_attends_per_block=0), ValueError, r"num_self_attends_per_block must be an integer >= 1; got 0"),
    # Torch internals: "empty() takes 1 positional argument", "cannot reshape tensor of 0 elements".
    (dict(num_latents=2.5), ValueError, r"num_latents must be an integer >= 1; got 2.5"),
    (dict(num_latents=0), ValueError, r"num_latents must be an integer >= 1; got 0"),
    (dict(num_latent_channels=True), ValueError, r"num_latent_channels must be an integer >= 1; got True"),
    # 0 fell back to num_latent_channels; -2 reached torch.
    (dict(final_project_out_channels=0), ValueError, r"final_project_out_channels \(or None\) must be an integer"),
    (dict(final_project_out_channels=-2), ValueError, r"final_project_out_channels \(or None\) must be an integer"),
    (dict(input_padding_channels=-5), ValueError, r"input_padding_channels must be an integer >= 0; got -5"),
    (dict(output_query_padding_channels=1.5), ValueError, r"output_query_padding_channels must be an integer >= 0"),
    (dict(final_project="no"), TypeError, r"final_project must be True or False; got 'no'"),
    # int() took 2.7 as 2 and True as 1 channel.
    (dict(input_channels=2.7), ValueError, r"input_channels must be an integer >= 1; got 2.7"),
    (dict(input_channels={"xyz": True}), ValueError, r"input_channels\['xyz'\] must be an integer >= 1; got True"),
])
def test_constructor_counts_are_checked_by_name(kwargs, error, message):
    queries = QueryGenerator("trainable", (1,), trainable_position_encoding_kwargs=dict(num_channels=8))
    args = dict(num_blocks=1, num_self_attends_per_block=1, num_latents=4, num_latent_channels=8, input_channels=3,
                output_queries=queries, perceiver_encoder_kwargs=dict(num_self_attend_heads=1))
    if isinstance(kwargs.get("input_channels"), dict):
        args["output_queries"] = {"xyz": args["output_queries"]}
    with pytest.raises(error, match=r"^PerceiverIO: " + message):
        PerceiverIO(**{**args, **kwargs})


@pytest.mark.parametrize("probs", [True, {"audio": 0.0, "label": True, "tokens": 0.0}, float("nan"),
                                   {"audio": 0.0, "label": "1", "tokens": 0.0}])
def test_mask_probabilities_must_be_numbers(probs):
    # True masked every position (float(True) is 1.0); "1" failed comparing a str with a float (NaN was refused).
    with pytest.raises(ValueError, match=r"mask probability for '\w+' must be a number in \[0, 1\]; got "):
        multimodal_model(mask_probs=probs)
