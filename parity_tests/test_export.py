"""torch.export and ONNX export of every task model, with a dynamic batch dimension, against eager.

Golden configurations with random weights (seeded): export equivalence does not depend on the
weights. Each export is traced at batch 2 and run at batch sizes 1 and 3. The cheap cases (one
.pt2 per task, ONNX for the flow model) run by default; the rest under `slow`.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch

from perceiver_torch import create_model, export_model
from perceiver_torch.export import (
    check_chunks,
    check_trace_batch,
    chunk_points,
    export_program,
    max_errors,
    onnx_runner,
)
from perceiver_torch.flow_tiling import stitch_tiles
from perceiver_torch.layers import attention
from perceiver_torch.saving import save_model
from perceiver_torch.zoo import cli as cli_module
from perceiver_torch.zoo import model_arg
from perceiver_torch.zoo.cli import main as zoo_cli

from .conftest import GOLDEN_TASKS as FAMILIES
from .conftest import seeded_model
from .zoo_support import TEST_HUB, TEST_MANIFEST, hub_env

# A torch.export program runs the same ATen kernels as eager on the same shapes, so 1e-5 (the
# issue's budget) is loose for it: it measures 0 here. onnxruntime has its own kernels (other
# summation orders, fused attention), measured at about 2e-6 on these outputs: 1e-5 still holds.
TOLERANCE = 1e-5

CHEAP = ("language", "imagenet_conv", "optical_flow", "video_autoencoding")


def _model(family: str):
    return seeded_model(family)


def _slow_unless(cheap: bool, family: str):
    return pytest.param(family, marks=()) if cheap else pytest.param(family, marks=pytest.mark.slow)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """family -> (model, the program saved by export_model and loaded back); each family exported once."""
    cache = {}

    def get(family: str):
        if family not in cache:
            model, directory = _model(family).eval(), tmp_path_factory.mktemp(family)
            path = export_model(model, directory / "model.pt2")
            assert sorted(p.name for p in directory.iterdir()) == ["model.pt2"]  # no temp file left
            cache[family] = model, torch.export.load(path).module()
        return cache[family]

    return get


@pytest.mark.parametrize("family", [_slow_unless(f in CHEAP, f) for f in FAMILIES])
def test_torch_export_matches_eager_at_two_batch_sizes(family, exported):
    model, program = exported(family)
    errors = max_errors(model, program, batches=(1, 3))
    assert max(errors.values()) <= TOLERANCE, errors


@pytest.mark.parametrize("family", [_slow_unless(f == "optical_flow", f) for f in FAMILIES])
def test_onnx_export_matches_eager_in_onnxruntime(family, tmp_path):
    model = _model(family)
    path = export_model(model, tmp_path / "model.onnx", format="onnx")
    errors = max_errors(model, onnx_runner(path), batches=(1, 3))
    assert max(errors.values()) <= TOLERANCE, errors


def test_language_export_takes_any_length_up_to_max_seq_len(exported):
    model, program = exported("language")
    with torch.no_grad():
        for length in (1, 5, model.config["max_seq_len"]):
            ids = torch.randint(0, 262, (2, length))
            mask = torch.ones_like(ids)
            mask[1, length // 2:] = 0
            torch.testing.assert_close(program(ids, mask), model(ids, mask), rtol=0, atol=TOLERANCE)


def test_bfloat16_language_exports_with_a_dynamic_length_across_the_narrow_key_limit(monkeypatch):
    """The bf16 attention path for narrow q/k heads is chosen by the per-sequence logits' size. With the limit
    set between the encoder's logits at the traced length and at max_seq_len, export must not guard on the
    length (it would refuse the dynamic range): sizes known only at run time keep the flash kernel. Against
    eager, which takes the other path where the size allows, within 2% of the logits' range (bf16 rounding of
    two kernels; measured 0.4%)."""
    model = _model("language").eval().to(torch.bfloat16)
    heads, latents = model.config["encoder"]["num_cross_attend_heads"], model.config["encoder"]["z_index_dim"]
    traced = max(2, model.config["max_seq_len"] // 2)  # what export_program traces with
    limit = heads * latents * (traced + model.config["max_seq_len"]) // 2
    monkeypatch.setattr(attention, "NARROW_KEY_LOGITS_MAX", limit)
    program = export_program(model).module()
    with torch.no_grad():
        for batch, length in ((1, 5), (3, model.config["max_seq_len"])):
            ids = torch.randint(0, 262, (batch, length))
            expected, actual = model(ids, torch.ones_like(ids)), program(ids, torch.ones_like(ids))
            assert ((actual - expected).abs().max() / expected.abs().max()) < 2e-2


def test_exported_flow_tile_model_drives_the_tiling_as_estimate_flow_does(exported):
    model, program = exported("optical_flow")
    image1, image2 = (torch.rand(2, 3, 30, 41) * 2 - 1 for _ in range(2))
    with torch.no_grad():
        expected = model.estimate_flow(image1, image2, min_overlap=4, tile_batch_size=3)
        actual = stitch_tiles(image1, image2, program, model.train_size, 4, 3)
    torch.testing.assert_close(actual, expected, rtol=0, atol=TOLERANCE)


def test_exported_video_chunks_rebuild_autoencode(exported):
    model, program = exported("video_autoencoding")
    chunks = model.config["nchunks"]  # what the export's chunk size defaults to
    images = torch.rand(3, model.num_frames, 3, model.image_size, model.image_size)
    audio = torch.rand(3, model.num_samples, 1) * 2 - 1
    with torch.no_grad():
        expected = model.autoencode(images, audio, chunks=chunks)
        parts = [program(images, audio, *chunk_points(model, chunks, i)) for i in range(chunks)]
    image = torch.cat([p[0] for p in parts], dim=1).reshape(3, model.num_frames, model.image_size,
                                                             model.image_size, 3).permute(0, 1, 4, 2, 3)
    torch.testing.assert_close(image, expected["image"], rtol=0, atol=TOLERANCE)
    torch.testing.assert_close(torch.cat([p[1] for p in parts], dim=1)[..., None], expected["audio"], rtol=0,
                               atol=TOLERANCE)
    torch.testing.assert_close(parts[-1][2], expected["label"], rtol=0, atol=TOLERANCE)


def test_export_refuses_bad_arguments(tmp_path):
    model = _model("optical_flow")
    for batch in (1, 65, 2.5, "3", None, True):  # the tracing batch: an integer from 2 to MAX_TRACE_BATCH
        with pytest.raises(ValueError, match=r"batch \(the tracing batch size\) must be an integer from 2 to 64"):
            export_model(model, tmp_path / "m.pt2", batch=batch)
    with pytest.raises(ValueError, match=r"format must be one of \('pt2', 'onnx'\)"):
        export_model(model, tmp_path / "m.pt2", format="tflite")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        export_model(model, tmp_path)
    with pytest.raises(ValueError, match="cannot export a Linear"):
        export_model(torch.nn.Linear(2, 2), tmp_path / "m.pt2")
    with pytest.raises(ValueError, match="chunks=3 must divide"):
        export_model(_model("video_autoencoding"), tmp_path / "m.pt2", chunks=3)
    assert list(tmp_path.iterdir()) == []


def test_cli_exports_a_zoo_model_by_name_and_verifies_it(tmp_path, monkeypatch, capsys):
    out = tmp_path / "lm.pt2"
    # The tiny test entries, pulled by name from the Hub stand-in serving the bundled tree.
    with hub_env(monkeypatch, TEST_HUB, tmp_path / "cache"):
        assert zoo_cli(["--manifest", str(TEST_MANIFEST), "export", "tiny-language-perceiver", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"tiny-language-perceiver: exported (pt2, float32, dynamic batch) to {out}" in printed
    assert "max |exported - eager|: 0.00e+00 at batch 1, 0.00e+00 at batch 3" in printed
    ids = torch.randint(0, 262, (4, 9))
    assert torch.export.load(out).module()(ids, torch.ones_like(ids)).shape == (4, 9, 262)


def test_cli_exports_a_converted_file_and_checks_its_chunks_before_loading(tmp_path, monkeypatch, capsys):
    """MODEL is what from_pretrained takes: a converted file too (its header checked before it is loaded)."""
    model = _model("language").eval()
    path = save_model(model, tmp_path / "lm.safetensors")
    out = tmp_path / "lm.pt2"
    assert zoo_cli(["export", str(path), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{path}: exported (pt2, float32, dynamic batch) to {out}" in printed
    assert max(max_errors(model, torch.export.load(out).module()).values()) <= TOLERANCE
    monkeypatch.setattr(model_arg, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    assert zoo_cli(["export", str(path), "-o", str(tmp_path / "x.pt2"), "--chunks", "2"]) == 1
    assert capsys.readouterr().err.strip() == "perceiver-zoo: error: chunks applies only to the video autoencoder " \
                                              "(task video_autoencoding); this model's task is 'language'."
    assert zoo_cli(["export", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "x.pt2")]) == 1
    assert capsys.readouterr().err.strip() == f"perceiver-zoo: error: {tmp_path / 'missing.safetensors'}: no such " \
                                              "file (MODEL is a zoo name, hf-hub:owner/name, a converted " \
                                              ".safetensors file or a save_pretrained directory)"
    assert zoo_cli(["export", "someone/model", "-o", str(tmp_path / "x.pt2")]) == 1
    assert capsys.readouterr().err.strip() == "perceiver-zoo: error: someone/model: no such file; a Hub repo is " \
                                              "named with its prefix: perceiver-zoo export hf-hub:someone/model ..."
    assert zoo_cli(["export", "someone/model@dev", "-o", str(tmp_path / "x.pt2")]) == 1  # timm's @REVISION too
    assert capsys.readouterr().err.strip() == "perceiver-zoo: error: someone/model@dev: no such file; a Hub repo is " \
                                              "named with its prefix: perceiver-zoo export hf-hub:someone/model@dev ..."
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm.pt2", "lm.safetensors"]


def test_export_model_takes_a_converted_file_or_save_pretrained_directory(tmp_path):
    """As from_pretrained reads a name: a path (str or Path) that is not a zoo or hf-hub: name is load_model's."""
    model = _model("language").eval()
    directory = tmp_path / "saved"
    model.save_pretrained(directory)
    for source in (directory, str(directory / "model.safetensors")):
        out = export_model(source, tmp_path / "lm.pt2", dtype="float32")
        assert max(max_errors(model, torch.export.load(out).module()).values()) <= TOLERANCE
    with pytest.raises(TypeError, match=r"export_model: '.*saved' is a file, which takes no manifest or "
                                        r"mirror \(only device, dtype, their"):
        export_model(directory, tmp_path / "x.pt2", manifest=TEST_MANIFEST, mirror="m")
    with pytest.raises(FileNotFoundError, match="is a directory without a model.safetensors"):
        export_model(tmp_path, tmp_path / "x.pt2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm.pt2", "saved"]



def test_cli_export_replaces_an_existing_output_only_with_force_and_never_its_source(tmp_path, monkeypatch, capsys):
    """As predict's --output: a rerun does not replace a file unasked; and no --force replaces the weights the
    export is made from (a .safetensors output name is exported as pt2). Both refused before anything is loaded."""
    model = _model("language").eval()
    source = save_model(model, tmp_path / "lm.safetensors")
    out = tmp_path / "lm.pt2"
    out.write_bytes(b"an earlier export")
    monkeypatch.setattr(model_arg, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    assert zoo_cli(["export", str(source), "-o", str(out)]) == 1
    assert capsys.readouterr().err.strip() == f"perceiver-zoo: error: {out} exists; pass --force to replace it"
    assert out.read_bytes() == b"an earlier export"
    weights = source.read_bytes()
    assert zoo_cli(["export", str(source), "-o", str(source), "--force"]) == 1
    assert capsys.readouterr().err.strip() == f"perceiver-zoo: error: {source} is the checkpoint being exported " \
                                              f"({source}); writing the export there would replace it: give another " \
                                              "output path."
    assert source.read_bytes() == weights
    monkeypatch.undo()
    assert zoo_cli(["export", str(source), "-o", str(out), "--force", "--no-verify"]) == 0
    assert max(max_errors(model, torch.export.load(out).module()).values()) <= TOLERANCE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm.pt2", "lm.safetensors"]


def test_export_model_refuses_to_write_over_the_checkpoint_it_exports(tmp_path):
    model = _model("language").eval()
    directory = tmp_path / "saved"
    model.save_pretrained(directory)
    weights = (directory / "model.safetensors").read_bytes()
    for source in (directory, directory / "model.safetensors", str(directory / "model.safetensors")):
        with pytest.raises(ValueError, match=r"model.safetensors is the checkpoint being exported .*: give another "
                                             "output path"):
            export_model(source, directory / "model.safetensors")
    assert (directory / "model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in directory.iterdir()) == ["model.safetensors"]

@pytest.mark.parametrize("model, option, message", [
    ("tiny-language-perceiver", ["--revision", "main"], "--revision applies to hf-hub: repos; "
                                                        "'tiny-language-perceiver' is a zoo name"),
    ("hf-hub:someone/model", ["--mirror", "m"], "--mirror applies to zoo models; 'hf-hub:someone/model' is a Hub "
                                                "repo"),
    ("./lm.safetensors", ["--endpoint", "http://127.0.0.1:1"], "--endpoint applies to zoo models and hf-hub: repos; "
                                                              "'./lm.safetensors' is a file"),
    ("./lm.safetensors", ["--revision", "main"], "--revision applies to hf-hub: repos; './lm.safetensors' is a file"),
])
def test_cli_export_refuses_a_source_option_that_does_not_apply(tmp_path, capsys, model, option, message):
    with pytest.raises(SystemExit) as exit_info:
        zoo_cli(["--manifest", str(TEST_MANIFEST), "export", model, "-o", str(tmp_path / "x.pt2"), *option])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.splitlines()[-1] == f"perceiver-zoo: error: {message}", err
    assert list(tmp_path.iterdir()) == []


def test_cli_export_errors_are_one_line(tmp_path, monkeypatch, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    manifest = ["--manifest", str(TEST_MANIFEST)]
    with hub_env(monkeypatch, TEST_HUB, tmp_path / "cache"):
        assert zoo_cli([*manifest, "export", "tiny-language-perceiver", "-o", str(out_dir)]) == 1
    assert capsys.readouterr().err.strip() == f"perceiver-zoo: error: {out_dir} is a directory; give the output " \
                                              "file's path."
    assert zoo_cli([*manifest, "export", "no-such-model", "-o", str(out_dir / "x.pt2")]) == 1
    assert capsys.readouterr().err.startswith("perceiver-zoo: error: no zoo model 'no-such-model' in ")
    with pytest.raises(SystemExit) as exit_info:
        zoo_cli([*manifest, "export", "tiny-language-perceiver", "-o", str(out_dir / "x.pt2"), "--batch", "1"])
    assert exit_info.value.code == 2 and "--batch must be from 2 to 64" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # would have allocated example inputs of that batch
        zoo_cli([*manifest, "export", "tiny-language-perceiver", "-o", str(out_dir / "x.pt2"), "--batch", "5000"])
    assert exit_info.value.code == 2 and "--batch must be from 2 to 64" in capsys.readouterr().err
    assert zoo_cli([*manifest, "export", "tiny-language-perceiver", "-o", f"{out_dir}/new/"]) == 1
    assert capsys.readouterr().err.strip() == f"perceiver-zoo: error: {out_dir}/new/ ends in a path separator, " \
                                              "naming a directory; give the output file's path."
    assert zoo_cli([*manifest, "export", "tiny-language-perceiver", "-o", ""]) == 1  # not "... . is a directory"
    assert capsys.readouterr().err.strip() == "perceiver-zoo: error: the output path is empty; give the output " \
                                              "file's path."
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("shift", [10**6, -10**3])
def test_exported_video_refuses_out_of_range_points(exported, shift):
    # Points become query positions by arithmetic, so nothing downstream would fail: the program checks them
    # itself (torch._assert_async, no host sync) instead of decoding garbage.
    model, program = exported("video_autoencoding")
    images = torch.rand(2, model.num_frames, 3, model.image_size, model.image_size)
    audio = torch.rand(2, model.num_samples, 1) * 2 - 1
    image_points, audio_points = chunk_points(model, model.config["nchunks"], 0)
    with torch.no_grad():
        program(images, audio, image_points, audio_points)  # in range: runs
        with pytest.raises(RuntimeError, match=r"subsample\['image'\] indices must lie in \[0, "):
            program(images, audio, image_points + shift, audio_points)
        with pytest.raises(RuntimeError, match=r"subsample\['audio'\] indices must lie in \[0, "):
            program(images, audio, image_points, audio_points + shift)


@pytest.mark.parametrize("task, chunks, refusal", [
    ("video_autoencoding", 0, "chunks must be a positive integer; got 0"),  # was taken as "the default"
    ("language", 2, "chunks applies only to the video autoencoder"),  # was ignored
])
def test_export_model_refuses_chunks_that_cannot_apply(tmp_path, task, chunks, refusal):
    with pytest.raises(ValueError, match=refusal):
        export_model(_model(task), tmp_path / "m.pt2", chunks=chunks)
    assert list(tmp_path.iterdir()) == []


def test_export_model_refuses_an_output_below_a_file_before_tracing(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")
    monkeypatch.setattr("perceiver_torch.export.export_program", lambda *a, **k: pytest.fail("traced"))
    with pytest.raises(NotADirectoryError, match=f"cannot write {tmp_path}/f/m.pt2: {tmp_path}/f is not a dir"):
        export_model(_model("language"), tmp_path / "f" / "m.pt2")


def test_exported_program_takes_batches_beyond_any_cap(exported):
    # stitch_tiles passes tile_batch_size x B tiles in one call: the program's batch has no upper bound.
    model, program = exported("language")
    ids = torch.randint(0, 262, (5000, 1))
    with torch.no_grad():
        torch.testing.assert_close(program(ids, torch.ones_like(ids)), model(ids, torch.ones_like(ids)), rtol=0,
                                   atol=TOLERANCE)


def test_export_model_refuses_arguments_it_would_ignore_or_could_not_honour(tmp_path):
    model = _model("imagenet_conv")
    with pytest.raises(TypeError, match="dtype apply only to a zoo model given by name"):
        export_model(model, tmp_path / "m.pt2", dtype="bfloat16")
    with pytest.raises(ValueError, match="ONNX export takes a float32 model; this one is bfloat16"):
        export_model(model.to(torch.bfloat16), tmp_path / "m.onnx", format="onnx")
    with pytest.raises(ValueError, match=r"names a \.onnx file but format is 'pt2'"):
        export_model(model, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"names a \.pt2 file but format is 'onnx'"):
        export_model(model, tmp_path / "m.pt2", format="onnx")
    with pytest.raises(IsADirectoryError, match="ends in a path separator"):
        export_model(model, f"{tmp_path}/sub/")
    with pytest.raises(ValueError, match="chunks applies only to the video autoencoder"):
        export_program(model, chunks=2)
    assert list(tmp_path.iterdir()) == []


def test_cli_takes_the_format_from_an_onnx_suffix(tmp_path, monkeypatch, capsys):
    out = tmp_path / "flow.onnx"
    with hub_env(monkeypatch, TEST_HUB, tmp_path / "cache"):
        assert zoo_cli(["--manifest", str(TEST_MANIFEST), "export", "tiny-optical-flow-perceiver", "-o", str(out)]) == 0
    assert f"exported (onnx, float32, dynamic batch) to {out}" in capsys.readouterr().out
    run, (height, width) = onnx_runner(out), create_model("tiny-optical-flow-perceiver", mirror=TEST_HUB,
                                                          manifest=TEST_MANIFEST).train_size
    assert run(*(torch.rand(2, 3, height, width) for _ in range(2))).shape == (2, 2, height, width)
    with pytest.raises(TypeError, match=r"takes 2 inputs \(image1, image2\); got 1"):
        run(torch.rand(2, 3, height, width))


def test_cli_fails_when_the_export_does_not_match_eager(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("perceiver_torch.zoo.cli.max_errors", lambda *a, **k: {1: 0.0, 3: 3e-3})
    """The file is put in place only once it matches: a mismatch leaves nothing at --output, in a folder the export
    had to create, and an earlier file there (replaced with --force) as it was."""
    out = tmp_path / "new" / "lm.pt2"
    argv = ["--manifest", str(TEST_MANIFEST), "export", "tiny-language-perceiver", "-o", str(out)]
    with hub_env(monkeypatch, TEST_HUB, tmp_path / "cache"):
        assert zoo_cli(argv) == 1
        assert capsys.readouterr().err.strip() == "perceiver-zoo: error: the export does not match the eager model " \
                                                  f"within 1e-05; nothing was written to {out}"
        assert not out.parent.exists()
        out.parent.mkdir()
        out.write_bytes(b"an earlier export")
        assert zoo_cli([*argv, "--force"]) == 1
    assert out.read_bytes() == b"an earlier export" and [p.name for p in out.parent.iterdir()] == ["lm.pt2"]


def test_cli_export_interrupted_while_verifying_leaves_no_file(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):  # Ctrl-C while the export is run against eager
        raise KeyboardInterrupt

    monkeypatch.setattr("perceiver_torch.zoo.cli.max_errors", interrupted)
    with hub_env(monkeypatch, TEST_HUB, tmp_path / "cache"):
        assert zoo_cli(["--manifest", str(TEST_MANIFEST), "export", "tiny-language-perceiver", "-o",
                        str(tmp_path / "out" / "lm.pt2")]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == "perceiver-zoo: interrupted; no file was left half-written."
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("shift", [10**6, 1, -1, -10**3])
def test_onnx_video_chunk_refuses_out_of_range_points(tmp_path, shift):
    # torch's ONNX exporter drops _assert_async: the exported graph's own gathers refuse such points instead.
    model = _model("video_autoencoding")
    run = onnx_runner(export_model(model, tmp_path / "video.onnx", format="onnx"))
    images = torch.rand(2, model.num_frames, 3, model.image_size, model.image_size)
    audio = torch.rand(2, model.num_samples, 1) * 2 - 1
    image_points, audio_points = chunk_points(model, model.config["nchunks"], 0)
    last_image, last_audio = chunk_points(model, model.config["nchunks"], model.config["nchunks"] - 1)
    run(images, audio, image_points, audio_points)  # in range: runs
    out_of_range = (last_image + shift, audio_points) if shift > 0 else (image_points + shift, audio_points)
    with pytest.raises(Exception, match="invalid index"):
        run(images, audio, *out_of_range)
    out_of_range = (image_points, last_audio + shift) if shift > 0 else (image_points, audio_points + shift)
    with pytest.raises(Exception, match="invalid index"):
        run(images, audio, *out_of_range)


def test_tracing_batch_and_chunks_take_numpy_integers_as_the_rest_of_the_package_does():
    # perceiver_torch.integers.is_int: an int or a NumPy integer (converted to int), never a bool.
    assert check_trace_batch(np.int64(3)) == 3 and type(check_trace_batch(np.int32(3))) is int
    for batch in (True, np.float64(2.0), np.int64(1)):
        with pytest.raises(ValueError, match=r"batch \(the tracing batch size\) must be an integer from 2 to 64"):
            check_trace_batch(batch)
    model = _model("video_autoencoding")
    chunks = model.config["nchunks"]
    for got, want in zip(chunk_points(model, np.int64(chunks), 1), chunk_points(model, chunks, 1), strict=True):
        assert torch.equal(got, want)
    check_chunks(model, np.int32(chunks))
    with pytest.raises(ValueError, match="chunks must be a positive integer; got True"):
        check_chunks(model, True)


@pytest.mark.parametrize("format", ["pt2", "onnx"])
def test_export_refuses_weights_on_the_meta_device(tmp_path, format):
    # Traced on fake tensors, a meta model exported without complaint into a program holding no weights.
    model = _model("imagenet_conv").to("meta")
    with pytest.raises(ValueError, match=r"cannot export PerceiverForImageClassification: \d+ tensor\(s\) are on "
                                         "the meta device, with no values to export"):
        export_model(model, tmp_path / f"m.{format}", format=format)
    assert list(tmp_path.iterdir()) == []


def test_a_torch_compile_wrapper_is_exported_as_the_model_it_wraps():
    # torch.export of the wrapper itself failed with a dynamic_shapes structure error.
    model = _model("imagenet_conv").eval()
    program = export_program(torch.compile(model)).module()
    errors = max_errors(model, program, batches=(1, 3))
    assert max(errors.values()) <= TOLERANCE, errors


def test_cli_refuses_a_file_name_contradicting_the_format_before_pulling(tmp_path, monkeypatch, capsys):
    # Was refused by export_model only after create_model had pulled (and verified) the model.
    monkeypatch.setattr(model_arg, "from_pretrained", lambda *a, **k: pytest.fail("pulled"))
    manifest = ["--manifest", str(TEST_MANIFEST)]
    assert zoo_cli([*manifest, "export", "tiny-language-perceiver", "-o", str(tmp_path / "lm.pt2"), "--format",
                    "onnx"]) == 1
    assert capsys.readouterr().err.strip() == f"perceiver-zoo: error: {tmp_path}/lm.pt2 names a .pt2 file but " \
                                              "format is 'onnx': pass format='pt2' or name the file .onnx."
    assert list(tmp_path.iterdir()) == []


def test_python_export_of_a_zoo_model_refuses_onnx_in_reduced_precision_before_pulling(tmp_path, monkeypatch):
    # export_model(name, format="onnx", dtype="bfloat16") used to pull (and verify) the model first.
    monkeypatch.setattr("perceiver_torch.export.create_model", lambda *a, **k: pytest.fail("pulled"))
    with pytest.raises(ValueError, match="ONNX export takes a float32 model; dtype asks for bfloat16"):
        export_model("tiny-language-perceiver", tmp_path / "lm.onnx", format="onnx", dtype="bfloat16")
    with pytest.raises(ValueError, match="dtype must be one of"):
        export_model("tiny-language-perceiver", tmp_path / "lm.onnx", format="onnx", dtype="int8")
    assert list(tmp_path.iterdir()) == []


def test_a_model_with_gradient_checkpointing_exports_and_matches_eager():
    # Set for training, exported while still training with grad enabled: torch.export (2.13) traces
    # non-reentrant checkpointing into the plain ops, and the program gives eager's values.
    model = _model("language").train()
    model.set_grad_checkpointing(True)
    program = export_program(model)
    assert model.training  # export restores the mode it found
    errors = max_errors(model, program.module(), batches=(1, 3))
    assert max(errors.values()) <= TOLERANCE, errors


def test_cli_export_silences_the_exporters_own_noise(monkeypatch):
    """What torch's exporters say about themselves (ONNX's "torchvision is not installed. Skipping ..." per op, a
    pytree deprecation torch triggers internally) is not shown to perceiver-zoo export's users."""
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    monkeypatch.setattr(registry, "level", logging.NOTSET)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        cli_module._quiet_exporter_noise()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and "
                      "treespec.is_leaf()` instead.", FutureWarning, stacklevel=1)
        warnings.warn("a warning about the model itself", FutureWarning, stacklevel=1)
    assert not registry.isEnabledFor(logging.WARNING) and registry.isEnabledFor(logging.ERROR)
    assert [str(w.message) for w in shown] == ["a warning about the model itself"]
