"""`perceiver-zoo predict`: each task's printed result is what its Python helper returns for the same input, and
every refusal is one error line, the right exit code, nothing pulled or loaded, no file left behind."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import perceiver_torch as pt
from parity_tests.conftest import convert_golden
from parity_tests.zoo_support import TEST_HUB, TEST_MANIFEST, cached_files, hub_env
from perceiver_torch.flow_visualization import encode_png, flow_to_rgb
from perceiver_torch.serialization import read_metadata
from perceiver_torch.zoo import model_arg
from perceiver_torch.zoo.cli import main as zoo_cli

REPO = Path(__file__).resolve().parents[1]
MANIFEST = ["--manifest", str(TEST_MANIFEST)]
TEXTS = ["This is an incomplete sentence where some words are" + "[MASK]" * 9, "[MASK]ello, world", ""]
GOLDEN = {"language": "language", "imagenet": "imagenet_conv", "optical_flow": "optical_flow",
          "video_autoencoding": "video_autoencoding"}
TINY = {"language": "tiny-language-perceiver", "imagenet": "tiny-vision-perceiver-conv",
        "optical_flow": "tiny-optical-flow-perceiver", "video_autoencoding": "tiny-multimodal-perceiver"}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Each task's golden checkpoint, converted; images and frames (the flow models' training size is 12x16)."""
    root = tmp_path_factory.mktemp("predict-inputs")
    found = {task: str(convert_golden(task, family, root)) for task, family in GOLDEN.items()}
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    moved = np.roll(frame, (1, 2), axis=(0, 1))  # the second frame: the first shifted right 2, down 1
    for name, pixels in {"frame1.png": frame, "frame2.png": moved, "photo.jpg": rng.integers(0, 256, (40, 50, 3),
                                                                                         dtype=np.uint8),
                         "small.png": frame[:8, :8], "tall.png": rng.integers(0, 256, (30, 20, 3), dtype=np.uint8),
                         "tiny.png": frame[:1, :1]}.items():
        Image.fromarray(pixels).save(root / name)
        found[name] = str(root / name)
    (root / "notes.png").write_text("not an image")
    found["notes.png"] = str(root / "notes.png")
    return found


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with hub_env(monkeypatch, TEST_HUB, tmp_path / "cache") as served:
        yield served


def _run(capsys, argv: list[str], stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode()), encoding="utf-8"))
    code = zoo_cli(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


def _frames(files) -> list[torch.Tensor]:
    """The frames as the flow colab scales them: [3, H, W] in [-1, 1]."""
    return [torch.from_numpy(np.asarray(Image.open(files[name]).convert("RGB"), dtype=np.float32)).permute(2, 0, 1)
            / 255 * 2 - 1 for name in ("frame1.png", "frame2.png")]


# --- each task's result is its helper's --------------------------------------------------------------------


def test_language_prints_the_filled_texts_from_args_and_stdin(files, capsys, monkeypatch):
    model = pt.load_model(files["language"])
    stdin_texts = ["from stdin [MASK][MASK]", "second line[MASK]"]
    wanted = model.fill_masked([TEXTS[0], *stdin_texts, TEXTS[1]])
    code, out, err = _run(capsys, ["predict", files["language"], TEXTS[0], "-", TEXTS[1]],
                          stdin="\n".join(stdin_texts) + "\n", monkeypatch=monkeypatch)
    assert code == 0 and err == ""
    # The golden model (random weights) predicts byte 0x19, a control character: printed escaped (see below).
    assert "\x19" in wanted[0] and out == "".join(f"{text}\n".replace("\x19", "\\x19") for text in wanted)

    code, out, _ = _run(capsys, ["predict", files["language"], *TEXTS, "--json"])
    assert code == 0
    assert json.loads(out) == {"model": files["language"], "task": "language",
                               "results": [{"input": t, "output": o}
                                           for t, o in zip(TEXTS, model.fill_masked(TEXTS), strict=True)]}


def test_predicted_control_bytes_are_printed_escaped_and_unmasked_texts_noted(files, capsys, monkeypatch):
    """A byte-level model may predict any byte: printed, none moves the cursor, rewrites the terminal or splits a
    text's line (--json keeps them, JSON-escaped); a text without the marker is noted on stderr."""
    predicted = ["\x1b[2Jwiped\nsecond line\x9b", "tab\tkept, caf\u00e9", "plain"]
    monkeypatch.setattr(pt.PerceiverForMaskedLM, "fill_masked", lambda self, texts, mask="[MASK]": predicted)
    texts = ["[MASK][MASK][MASK][MASK]", "x[MASK]", "no marker"]
    code, out, err = _run(capsys, ["predict", files["language"], *texts])
    assert code == 0 and out.splitlines() == ["\\x1b[2Jwiped\\x0asecond line\\x9b", "tab\tkept, caf\u00e9", "plain"]
    assert err == "perceiver-zoo: note: 1 of 3 texts hold no [MASK] marker; they are printed as given (--mask sets " \
                  "another marker)\n"
    code, out, _ = _run(capsys, ["predict", files["language"], *texts, "--json"])
    assert [r["output"] for r in json.loads(out)["results"]] == predicted  # C0 and C1 alike escaped, the rest kept
    assert "\x1b" not in out and "\x9b" not in out and "\\u009b" in out and "caf\u00e9" in out


def test_a_save_pretrained_directory_is_a_model(files, capsys, tmp_path):
    """MODEL is what from_pretrained reads: a save_pretrained directory too (its model.safetensors)."""
    model = pt.load_model(files["language"])
    model.save_pretrained(tmp_path / "my-lm")
    code, out, _ = _run(capsys, ["predict", str(tmp_path / "my-lm"), TEXTS[0]])
    assert code == 0 and out == model.fill_masked(TEXTS[0]).replace("\x19", "\\x19") + "\n"  # escaped, as above
    (tmp_path / "empty").mkdir()
    assert zoo_cli(["predict", str(tmp_path / "empty"), "x"]) == 1
    assert capsys.readouterr().err == f"perceiver-zoo: error: {tmp_path / 'empty'} is a directory without a " \
                                      "model.safetensors (what save_pretrained writes into one)\n"


def test_language_mask_marker_and_dtype(files, capsys):
    model = pt.load_model(files["language"], dtype="bfloat16")
    texts = ["Hello, <?><?>!", "<?>"]
    code, out, _ = _run(capsys, ["predict", files["language"], *texts, "--mask", "<?>", "--dtype", "bfloat16"])
    assert code == 0 and out.splitlines() == model.fill_masked(texts, "<?>")


def test_language_from_the_zoo_is_pulled_and_verified(capsys, hub, tmp_path):
    code, out, _ = _run(capsys, [*MANIFEST, "predict", TINY["language"], *TEXTS, "--json"])
    assert code == 0 and hub.requests > 0 and cached_files(tmp_path / "cache")  # pulled into the Hub cache
    model = pt.create_model(TINY["language"], manifest=TEST_MANIFEST)
    assert [r["output"] for r in json.loads(out)["results"]] == model.fill_masked(TEXTS)


def test_imagenet_prints_the_top_k_that_classify_returns(files, capsys):
    images = [files["photo.jpg"], files["frame1.png"]]
    wanted = pt.load_model(files["imagenet"]).classify(images, k=3)
    code, out, err = _run(capsys, ["predict", files["imagenet"], *images, "-k", "3"])
    assert code == 0 and err == ""
    expected = []
    for image, ranked in zip(images, wanted, strict=True):
        expected += [f"{image}:", *(f"  {p:.4f}  {label}" for label, p in ranked)]
    assert out.splitlines() == expected

    code, out, _ = _run(capsys, ["predict", files["imagenet"], *images, "-k", "3", "--json"])
    assert code == 0
    results = json.loads(out)["results"]
    assert [r["input"] for r in results] == images
    assert [[(t["label"], t["probability"]) for t in r["top_k"]] for r in results] == wanted  # exact floats


def test_imagenet_prints_the_class_names_the_file_holds(files, capsys, tmp_path):
    model = pt.load_model(files["imagenet"])
    model.class_names = [f"class {chr(ord('a') + i)}" for i in range(model.num_classes)]
    path = pt.save_model(model, tmp_path / "named.safetensors")
    wanted = model.classify(files["photo.jpg"], k=2)
    code, out, err = _run(capsys, ["predict", str(path), files["photo.jpg"], "-k", "2"])
    assert code == 0 and err == ""
    assert out.splitlines() == [f"{files['photo.jpg']}:", *(f"  {p:.4f}  {label}" for label, p in wanted)]
    assert all(label.startswith("class ") for label, _ in wanted)


def test_imagenet_from_the_zoo_defaults_to_five_labels(files, capsys, hub):
    wanted = pt.create_model(TINY["imagenet"], manifest=TEST_MANIFEST).classify(files["photo.jpg"])
    code, out, _ = _run(capsys, [*MANIFEST, "predict", TINY["imagenet"], files["photo.jpg"], "--json"])
    assert code == 0
    (result,) = json.loads(out)["results"]
    assert len(wanted) == 5 and [(t["label"], t["probability"]) for t in result["top_k"]] == wanted


@pytest.mark.parametrize("source", ["file", "zoo"])
def test_flow_npy_is_what_estimate_flow_returns(files, capsys, tmp_path, source, request):
    if source == "zoo":
        request.getfixturevalue("hub")
        argv, model = [*MANIFEST, "predict", TINY["optical_flow"]], pt.create_model(TINY["optical_flow"],
                                                                                   manifest=TEST_MANIFEST)
    else:
        argv, model = ["predict", files["optical_flow"]], pt.load_model(files["optical_flow"])
    wanted = model.estimate_flow(*_frames(files))
    out_file = tmp_path / "out" / "flow.npy"
    code, out, err = _run(capsys, [*argv, files["frame1.png"], files["frame2.png"], "-o", str(out_file)])
    assert code == 0 and err == ""
    written = np.load(out_file, allow_pickle=False)
    assert written.dtype == np.float32 and written.shape == (2, 20, 30)
    assert np.array_equal(written, wanted.numpy())
    magnitude = torch.hypot(wanted[0], wanted[1])
    assert out == (f"flow 20x30 written to {out_file} (dx, dy as [2, H, W] float32); mean magnitude "
                   f"{float(magnitude.mean()):.3f} px, max {float(magnitude.max()):.3f} px\n")
    assert sorted(p.name for p in out_file.parent.iterdir()) == ["flow.npy"]  # no temp file left


def test_flow_png_json_and_force(files, capsys, tmp_path):
    wanted = pt.load_model(files["optical_flow"]).estimate_flow(*_frames(files))
    png = tmp_path / "flow.png"
    png.write_bytes(b"old")
    argv = ["predict", files["optical_flow"], files["frame1.png"], files["frame2.png"], "-o", str(png), "--json"]
    code, _, err = _run(capsys, argv)
    assert code == 1 and err == f"perceiver-zoo: error: {png} exists; pass --force to replace it\n"
    assert png.read_bytes() == b"old"
    code, out, _ = _run(capsys, [*argv, "--force"])
    assert code == 0 and png.read_bytes() == encode_png(flow_to_rgb(wanted))
    (result,) = json.loads(out)["results"]
    magnitude = torch.hypot(wanted[0], wanted[1])
    assert result == {"frames": [files["frame1.png"], files["frame2.png"]], "output": str(png), "shape": [2, 20, 30],
                      "layout": "[2, H, W] float32, pixels: channel 0 = dx (u, right), channel 1 = dy (v, down)",
                      "mean_magnitude": float(magnitude.mean()), "max_magnitude": float(magnitude.max())}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flow.png"]


def test_console_script_runs_predict(files):
    # The installed entry point, with this checkout's package first on the path (the venv may hold another copy).
    script = Path(sysconfig.get_path("scripts")) / "perceiver-zoo"
    assert script.is_file(), script
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([str(script), "predict", files["language"], "-", "--json"], input="\n".join(TEXTS[:2]),
                            capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr
    outputs = [r["output"] for r in json.loads(result.stdout)["results"]]
    assert outputs == pt.load_model(files["language"]).fill_masked(TEXTS[:2])


# --- refusals ----------------------------------------------------------------------------------------------


@pytest.fixture
def refused(capsys, monkeypatch, tmp_path, hub):
    """Run argv from an empty folder and check the refusal: exit code, one error line (after argparse's usage
    for exit 2) holding `message`, nothing on stdout, nothing pulled or loaded, no file written anywhere."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    def not_loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(model_arg, "from_pretrained", not_loaded)

    def check(argv, code, message, stdin: str | bytes = ""):
        data = stdin.encode() if isinstance(stdin, str) else stdin
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
        if code == 2:
            with pytest.raises(SystemExit) as exit_info:
                zoo_cli(argv)
            assert exit_info.value.code == 2
        else:
            assert zoo_cli(argv) == code
        out, err = capsys.readouterr()
        lines = err.splitlines()
        prefix = "perceiver-zoo predict: error: " if code == 2 else "perceiver-zoo: error: "
        assert lines and lines[-1].startswith(prefix) and message in lines[-1], err
        if code == 2:
            assert lines[0].startswith("usage: perceiver-zoo predict") and not any("error" in x for x in lines[:-1])
        else:
            assert len(lines) == 1, err
        assert out == "" and "Traceback" not in err
        assert hub.requests == 0 and cached_files(tmp_path / "cache") == []
        assert list(work.iterdir()) == []
        return lines[-1]

    return check


def _flow_args(files, *frames, output="flow.npy"):
    return ["predict", files["optical_flow"], *(files[f] for f in frames), "-o", output]


@pytest.mark.parametrize("task, config, problem", [
    ("no-such-task", "{}", "task: found 'no-such-task' (str); expected one of ['language', "),
    ("language", {"d_model": 2.5}, "d_model: found 2.5"),
    ("language", "[1]", "(file): found [1] (list); expected a JSON object"),
])
def test_a_file_whose_metadata_load_model_refuses(files, capsys, monkeypatch, tmp_path, task, config, problem):
    """A converted file's task and config are checked as load_model checks them, before the model is loaded: the
    error line names the file, the lines after it list the problems (as load_model's error does)."""
    if isinstance(config, dict):  # the golden language config with these changes
        config = json.dumps({**json.loads(read_metadata(files["language"])["config"]), **config})
    path = tmp_path / "odd.safetensors"
    save_file({"x": torch.zeros(1)}, path, metadata={"format": "perceiver-torch", "task": task, "config": config})
    monkeypatch.setattr(model_arg, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    assert zoo_cli(["predict", str(path), "x"]) == 1
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and "Traceback" not in err
    assert lines[0] == f"perceiver-zoo: error: {path} (metadata config) is not a valid config: 1 problem(s)", err
    assert len(lines) == 2 and problem in lines[1], err


@pytest.mark.parametrize("make_argv, message", [
    (lambda f: ["predict", f["imagenet"], f["photo.jpg"], "missing.png"], "missing.png: no such file"),
    (lambda f: ["predict", f["imagenet"], str(Path(f["photo.jpg"]).parent)], ": is a directory"),
    (lambda f: ["predict", f["imagenet"], f["notes.png"]], "notes.png: not an image Pillow can read "
                                                           "(UnidentifiedImageError"),
    (lambda f: ["predict", f["imagenet"], f["tiny.png"]], "tiny.png: an image of 1x1 pixels is too small to crop"),
    (lambda f: ["predict", f["imagenet"], f["photo.jpg"], "-k", "11"], "-k 11 is more than the 10 classes of"),
    (lambda f: _flow_args(f, "frame1.png"), "give exactly two frames (image files); got 1 input(s)"),
    (lambda f: _flow_args(f, "frame1.png", "frame2.png", "photo.jpg"), "got 3 input(s)"),
    (lambda f: _flow_args(f, "frame1.png", "tall.png"), "the frames differ in size: "),
    (lambda f: _flow_args(f, "small.png", "small.png"), "small.png: frames of 8x8 are smaller than "),
    (lambda f: _flow_args(f, "frame1.png", "notes.png"), "notes.png: not an image Pillow can read"),
    (lambda f: ["predict", f["optical_flow"], f["frame1.png"], f["frame2.png"]], "give --output FILE (.npy: "),
    (lambda f: ["predict", f["language"], "a" * 65], "input 1 ('aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...') is 65 "
                                                     "bytes with each [MASK] counted as one; "),
    (lambda f: ["predict", f["language"], "short", "b[MASK]" * 40, "--mask", "[MASK]"], "input 2 ('b[MASK]"),
    (lambda f: ["predict", f["language"], "x", "-k", "3"], "-k applies to imagenet models; "),
    (lambda f: ["predict", f["imagenet"], f["photo.jpg"], "--mask", "#"], "--mask applies to language models; "),
    (lambda f: ["predict", f["language"], "x", "-o", "out.npy"], "--output applies to optical_flow models; "),
    (lambda f: ["predict", f["video_autoencoding"], "clip.mp4"], "is a video autoencoder (task "
                                                                 "video_autoencoding): perceiver-zoo predict does not "
                                                                 "decode videos; in Python, load it"),
    (lambda f: [*MANIFEST, "predict", TINY["video_autoencoding"], "clip.mp4"], "call model.autoencode("),
    (lambda f: [*MANIFEST, "predict", "no-such-model", "x"], "no zoo model 'no-such-model' in "),
    (lambda f: ["predict", "someone/model", "x"], "someone/model: no such file; a Hub repo is named with its "
                                                  "prefix: perceiver-zoo predict hf-hub:someone/model ..."),
    (lambda f: [*MANIFEST, "predict", "someone/tiny-language-perceiver", "x"], "someone/tiny-language-perceiver: no "
                                                                               "such file; the zoo's entry for these "
                                                                               "weights is 'tiny-language-perceiver'"),
    (lambda f: ["predict", "missing.safetensors", "x"], "missing.safetensors: no such file (MODEL is a zoo name"),
    (lambda f: ["predict", f["notes.png"], "x"], "notes.png"),  # not a safetensors file: the reader's refusal
    (lambda f: ["predict", f["language"], "--device", "no-such-device", "x"], "device 'no-such-device' cannot be "
                                                                             "used here"),
], ids=["missing-image", "directory", "not-an-image", "too-small-to-crop", "k-above-classes", "one-frame",
        "three-frames", "frames-differ", "frames-too-small", "frame-not-an-image", "flow-without-output",
        "text-too-long", "text-too-long-named", "k-for-language", "mask-for-imagenet", "output-for-language",
        "video-file", "video-zoo", "unknown-zoo-name", "owner-name", "owner-name-in-zoo", "missing-model",
        "model-not-safetensors", "bad-device"])
def test_refused_with_one_line_and_exit_1(files, refused, make_argv, message):
    refused(make_argv(files), 1, message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_a_gpu_is_refused(files, refused):
    refused(["predict", files["language"], "x", "--device", "cuda"], 1, "device 'cuda' cannot be used here")


def test_a_headless_classifier_is_refused(files, refused, tmp_path):
    model = pt.load_model(files["imagenet"])
    model.reset_classifier(0)
    headless = pt.save_model(model, tmp_path / "headless.safetensors")
    refused(["predict", str(headless), files["photo.jpg"]], 1, f"{headless} has no classifier (num_classes 0): it "
                                                               "gives image embeddings, not labels")


def test_stdin_refusals(files, refused):
    refused(["predict", files["language"], "-"], 1, "stdin (-) holds no text; give one text per line")
    line = refused(["predict", files["language"], "ok", "-"], 1, "stdin line 2 ('", stdin="fine\n" + "z" * 70)
    assert "is 70 bytes" in line
    refused(["predict", files["language"], "-"], 1, "stdin: not UTF-8 text (invalid start byte at byte 3)",
            stdin=b"ok\n\xff\n")
    # A byte that is not UTF-8 in argv (or in stdin read with surrogateescape) reaches Python as a lone surrogate.
    refused(["predict", files["language"], "ok", "b\udcff"], 1, "input 2: not UTF-8 text (an undecodable byte at "
                                                               "character 1)")


def test_output_problems_are_refused_before_the_model_is_loaded(files, refused, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    refused(_flow_args(files, "frame1.png", "frame2.png", output=str(blocker / "sub" / "flow.npy")), 1,
            f"cannot write {blocker / 'sub' / 'flow.npy'}: {blocker} is not a directory.")
    folder = tmp_path / "folder.npy"
    folder.mkdir()
    refused(_flow_args(files, "frame1.png", "frame2.png", output=str(folder)), 1,
            f"{folder} is a directory; give the output file's path.")
    existing = tmp_path / "flow.npy"
    existing.write_bytes(b"keep")
    refused(_flow_args(files, "frame1.png", "frame2.png", output=str(existing)), 1,
            f"{existing} exists; pass --force to replace it")
    assert existing.read_bytes() == b"keep" and blocker.read_text() == "x"
    frames = [tmp_path / "first.png", tmp_path / "second.png"]
    for frame, name in zip(frames, ("frame1.png", "frame2.png"), strict=True):
        frame.write_bytes(Path(files[name]).read_bytes())
    for output in (frames[1], tmp_path / "link.png"):  # --force replaces a result, never an input (nor its link)
        if output.name == "link.png":
            output.symlink_to(frames[1])
        refused(["predict", files["optical_flow"], *map(str, frames), "-o", str(output), "--force"], 1,
                f"--output {output} is the input frame {frames[1]}; give another output path")
    assert frames[1].read_bytes() == Path(files["frame2.png"]).read_bytes()


def test_images_without_pillow_name_the_extra(files, refused, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # `import PIL` fails as if it were not installed
    message = 'reading images needs Pillow, the "image" extra: pip install "perceiver-torch[image]"'
    refused(["predict", files["imagenet"], files["photo.jpg"]], 1, message)
    refused(_flow_args(files, "frame1.png", "frame2.png"), 1, message)


@pytest.mark.parametrize("argv, message", [
    (["-k", "0"], "-k must be >= 1 (labels per image); got 0"),
    (["--mask", ""], "--mask must be a non-empty marker"),
    (["-o", "flow.txt"], "--output must end in .npy (the flow, [2, H, W] float32, pixels: channel 0 = dx"),
    (["--force"], "--force replaces an existing --output; no --output was given"),
    (["-", "-"], "stdin (-) can be read once; give - at most once"),
    (["--endpoint", "http://127.0.0.1:9"], "--endpoint applies to zoo models and hf-hub: repos; "),
    (["--mirror", "somewhere"], "--mirror applies to zoo models; "),
    (["--revision", "main"], "--revision applies to hf-hub: repos; "),
    (["--endpoint", ""], "--endpoint must not be empty"),
    (["--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
], ids=["k-zero", "empty-mask", "output-suffix", "force-alone", "stdin-twice", "endpoint-for-file",
        "mirror-for-file", "revision-for-file", "empty-endpoint", "bad-dtype"])
def test_usage_errors_exit_2(files, refused, argv, message):
    refused(["predict", files["language"], "text", *argv], 2, message)
