"""ImagePreprocessor pieces against their upstream definitions (TF 'SAME' padding, space-to-depth order)."""

import numpy as np
import pytest
import torch

from perceiver_torch.layers.image import (
    BatchNorm,
    Conv2DDownsample,
    ImagePreprocessor,
    same_padding,
    space_to_depth,
)

from .conftest import assert_close


def test_same_padding_of_the_released_stem():
    assert same_padding(224, 7, 2) == (2, 3)  # the conv: 2 before, 3 after
    assert same_padding(112, 3, 2) == (0, 1)  # the max pool
    assert same_padding(32, 7, 2) == (2, 3)


def test_conv_stem_matches_jax_same_conv_and_max_pool():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    torch.manual_seed(0)
    stem = Conv2DDownsample(3, num_layers=1, num_channels=8).eval()
    with torch.no_grad():
        bn = stem.batchnorms[0]
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    x = np.random.default_rng(0).normal(size=(2, 3, 29, 30)).astype(np.float32)  # odd sizes: asymmetric pads
    with torch.no_grad():
        ours = stem(torch.from_numpy(x)).numpy()
    kernel = stem.convs[0].weight.detach().numpy().transpose(2, 3, 1, 0)  # HWIO, as Haiku stores it
    y = jax.lax.conv_general_dilated(jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(kernel), (2, 2), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    mean, var, scale, offset = (t.detach().numpy() for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias))
    y = jax.nn.relu((y - mean) * (scale / np.sqrt(var + 1e-5)) + offset)
    y = jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "SAME")
    assert ours.shape == (2, 8, 8, 8)
    assert_close(ours, np.asarray(y).transpose(0, 3, 1, 2), atol=1e-5, rtol=1e-5, what="conv stem")


def test_released_conv_stem_gives_56x56():
    pre = ImagePreprocessor("conv", position_encoding_type="fourier", input_shape=(224, 224, 3),
                            fourier_position_encoding_kwargs=dict(num_bands=4, max_resolution=(56, 56)))
    assert pre.index_dims == (56, 56)
    with torch.no_grad():
        with_pos, sizes, without_pos = pre(torch.zeros(1, 224, 224, 3))
    assert with_pos.shape == (1, 56 * 56, 64 + 2 + 2 * 2 * 4) and sizes is None and without_pos.shape[-1] == 64


def test_space_to_depth_orders_channels_as_upstream():
    # einops 'b (t dt) (h dh) (w dw) c -> b t h w (dt dh dw c)', written out with numpy indexing.
    x = np.arange(1 * 4 * 6 * 6 * 3).reshape(1, 4, 6, 6, 3)
    ours = space_to_depth(torch.from_numpy(x), temporal_block_size=2, spatial_block_size=3).numpy()
    b, t, h, w = 0, 1, 1, 0
    expected = [x[b, t * 2 + dt, h * 3 + dh, w * 3 + dw, c]
                for dt in range(2) for dh in range(3) for dw in range(3) for c in range(3)]
    assert ours.shape == (1, 2, 2, 2, 54)
    assert ours[b, t, h, w].tolist() == expected


def test_projected_trainable_positions_need_input_shape():
    with pytest.raises(ValueError, match="input_shape"):
        ImagePreprocessor("pixels", position_encoding_type="trainable",
                          trainable_position_encoding_kwargs=dict(num_channels=4))


def test_add_positions_and_extra_pos_mlp():
    pre = ImagePreprocessor("conv1x1", spatial_downsample=2, num_channels=6, position_encoding_type="trainable",
                            trainable_position_encoding_kwargs=dict(num_channels=6), concat_or_add_pos="add",
                            n_extra_pos_mlp=2, input_shape=(8, 8, 3))
    assert pre.index_dims == (4, 4) and pre.num_channels == 6
    x = torch.randn(2, 8, 8, 3)
    with_pos, _, without_pos = pre(x)
    pos = pre.position_encoding(1)
    hidden = torch.relu(pos + pre.extra_pos_mlp[0](pos))
    assert_close(with_pos.detach().numpy(), (without_pos + hidden + pre.extra_pos_mlp[1](hidden)).detach().numpy(),
                 atol=1e-6, rtol=1e-6)


def test_wrong_input_shape_is_refused():
    pre = ImagePreprocessor("pixels", spatial_downsample=1, position_encoding_type="fourier",
                            fourier_position_encoding_kwargs=dict(num_bands=2, max_resolution=(4, 4)),
                            input_shape=(4, 4, 3))
    with pytest.raises(ValueError, match=r"\[B, 4, 4, 3\]"):
        pre(torch.zeros(1, 3, 4, 4))


def _haiku_tree(names_and_shapes):
    tree = {"params": {}, "state": {}}
    for key, shape in names_and_shapes.items():
        collection, path = key.split(":")
        module, leaf = path.rsplit("/", 1)
        tree[collection].setdefault(module, {})[leaf] = np.zeros(shape, np.float32)
    return tree


@pytest.mark.parametrize("kwargs, haiku_leaves", [
    (  # two conv-stem layers: Haiku numbers repeated names conv, conv_1 / batchnorm, batchnorm_1
        dict(prep_type="conv", spatial_downsample=16, num_channels=4, position_encoding_type="fourier",
             fourier_position_encoding_kwargs=dict(num_bands=2, max_resolution=(2, 2))),
        {**{f"params:p/~/conv2_d_downsample/~/{c}/w": s for c, s in (("conv", (7, 7, 3, 4)), ("conv_1", (7, 7, 4, 4)))},
         **{f"params:p/~/conv2_d_downsample/~/{bn}/{leaf}": (1, 1, 1, 4)
            for bn in ("batchnorm", "batchnorm_1") for leaf in ("scale", "offset")},
         **{f"state:p/~/conv2_d_downsample/~/{bn}/~/{ema}/average": (1, 1, 1, 4)
            for bn in ("batchnorm", "batchnorm_1") for ema in ("mean_ema", "var_ema")}},
    ),
    (  # patches + projection made in __call__, projected learned positions and extra position MLPs
        dict(prep_type="patches", spatial_downsample=2, temporal_downsample=2, conv_after_patching=True,
             num_channels=5, position_encoding_type="trainable", project_pos_dim=6, n_extra_pos_mlp=2,
             trainable_position_encoding_kwargs=dict(num_channels=3)),
        {"params:p/patches_linear/w": (24, 5), "params:p/patches_linear/b": (5,),
         "params:p/~_build_network_inputs/trainable_position_encoding/pos_embs": (16, 3),
         "params:p/~_build_network_inputs/position_encoding_projector/linear/w": (3, 6),
         "params:p/~_build_network_inputs/position_encoding_projector/linear/b": (6,),
         **{f"params:p/~_build_network_inputs/{lin}/{leaf}": shape for lin in ("linear", "linear_1")
            for leaf, shape in (("w", (6, 6)), ("b", (6,)))}},
    ),
])
def test_image_preprocessor_rules_cover_every_parameter(kwargs, haiku_leaves):
    from converters import HaikuCheckpoint
    from converters.rules import image_preprocessor_rules, strict_merge

    shape = (32, 32, 3) if kwargs["prep_type"] == "conv" else (2, 8, 8, 3)
    pre = ImagePreprocessor(**kwargs, input_shape=shape)
    tree = _haiku_tree(haiku_leaves)
    targets = {f"pre.{k}": tuple(v.shape) for k, v in pre.state_dict().items()}
    merged = strict_merge(HaikuCheckpoint(tree["params"], tree["state"]).flat(), targets,
                          image_preprocessor_rules("p", "pre", kwargs))
    assert set(merged) == set(targets)


@pytest.mark.parametrize("shape", [(2, 9, 7, 3), (2, 3, 9, 7, 3)], ids=["images", "videos"])
def test_conv1x1_applied_channels_last_equals_the_strided_convolution(shape):
    # The 1x1 convolution runs as a linear map on the kept pixels, channels-last (no permute back): the
    # same as nn.Conv2d on channels-first frames, to float64 rounding.
    torch.manual_seed(0)
    pre = ImagePreprocessor("conv1x1", spatial_downsample=2, num_channels=5, position_encoding_type="trainable",
                            trainable_position_encoding_kwargs=dict(num_channels=4),
                            input_shape=shape[1:]).double()
    x = torch.randn(*shape, dtype=torch.float64)
    frames = x.reshape(-1, *shape[-3:]).permute(0, 3, 1, 2)
    want = pre.convnet_1x1(frames).permute(0, 2, 3, 1).reshape(*shape[:-3], 5, 4, 5)
    got = pre.featurize(x)
    assert got.is_contiguous()
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_batch_norm_training_updates_running_statistics_with_decay_0_9():
    """Training moves each running statistic 1 - decay = 0.1 of the way to the batch's, as the class documents
    (PyTorch-style: F.batch_norm with momentum 1 - decay_rate). The variance it averages is the *unbiased* batch
    variance (n / (n - 1)), PyTorch's convention, not Haiku's biased one: that is what the code implements, and
    only the converted averages (Haiku's `average`) matter at inference. Evaluation then normalises with them."""
    bn = BatchNorm(3)  # decay_rate 0.9, Haiku's default
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, -1.0, 3.0]))
    g = torch.Generator().manual_seed(0)
    # Channel means and spreads far from the initial 0 / 1 so that a wrong momentum moves them visibly.
    batches = [torch.randn(2, 3, 3, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.2])[:, None, None]
               + torch.tensor([5.0, -2.0, 0.5])[:, None, None] for _ in range(2)]
    mean, var = np.zeros(3), np.ones(3)
    bn.double().train()
    for x in batches:
        values = x.permute(1, 0, 2, 3).reshape(3, -1).numpy()  # per channel: N * H * W = 18 values
        out = bn(x)
        n = values.shape[1]
        batch_mean, biased = values.mean(1), values.var(1)
        mean = 0.9 * mean + 0.1 * batch_mean
        var = 0.9 * var + 0.1 * biased * n / (n - 1)
        # 1e-12: float64 arithmetic on values of order 10 (a few thousand ulps of headroom, far below the
        # 18 / 17 factor between unbiased and biased or any wrong momentum).
        np.testing.assert_allclose(bn.running_mean.numpy(), mean, rtol=0, atol=1e-12)
        np.testing.assert_allclose(bn.running_var.numpy(), var, rtol=0, atol=1e-12)
        # In training the output is normalised with the batch's own (biased) statistics.
        scale, shift = bn.weight.detach().numpy(), bn.bias.detach().numpy()
        expected = (values - batch_mean[:, None]) / np.sqrt(biased[:, None] + 1e-5) * scale[:, None] + shift[:, None]
        np.testing.assert_allclose(out.detach().permute(1, 0, 2, 3).reshape(3, -1).numpy(), expected, atol=1e-12)
    bn.eval()
    before = bn.running_mean.clone(), bn.running_var.clone()
    x = batches[0]
    out = bn(x).detach().permute(1, 0, 2, 3).reshape(3, -1).numpy()
    values = x.permute(1, 0, 2, 3).reshape(3, -1).numpy()
    expected = (values - mean[:, None]) / np.sqrt(var[:, None] + 1e-5) * scale[:, None] + shift[:, None]
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)  # float64 again, as above
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])  # eval keeps them
