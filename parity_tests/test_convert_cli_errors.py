"""perceiver-convert on bad input: `perceiver-convert: error: ...` and the problems, exit 1, no traceback, no files.

Bad arguments are argparse's business: exit 2.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converters import cli
from converters.cli import main

from .conftest import golden_dir
from .sandbox import REPO

HOSTILE_CONFIGS = Path(__file__).parent / "fixtures" / "hostile" / "configs"
CONFIG_CASES = json.loads((HOSTILE_CONFIGS / "cases.json").read_text())
SOURCES = {"language": "language", "imagenet": "imagenet_conv", "optical_flow": "optical_flow",
           "video_autoencoding": "video_autoencoding"}


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "converters", *args], cwd=cwd, capture_output=True, text=True)


def _assert_clean_failure(rc: int, err: str, out_dir: Path, *parts: str) -> None:
    assert rc == 1, err
    assert err.startswith("perceiver-convert: error: "), err
    assert "Traceback" not in err, err
    for part in parts:
        assert part in err, err
    assert [p.name for p in out_dir.iterdir()] == [], "nothing may be written on failure"


@pytest.mark.parametrize("name", sorted(CONFIG_CASES))
def test_every_hostile_config_is_one_clean_error(tmp_path, capsys, name):
    case = CONFIG_CASES[name]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    source = golden_dir(SOURCES[case["task"]]) / "checkpoint.pickle"
    rc = main([case["task"], str(source), "--config", str(HOSTILE_CONFIGS / name), "-o", str(out_dir / "x.st")])
    _assert_clean_failure(rc, capsys.readouterr().err, out_dir, str(HOSTILE_CONFIGS / name), *case["contains"])


def test_problems_are_listed_one_per_line(tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    rc = main(["language", str(golden_dir("language") / "checkpoint.pickle"), "--config",
               str(HOSTILE_CONFIGS / "several_problems.json"), "-o", str(out_dir / "x.st")])
    err = capsys.readouterr().err
    _assert_clean_failure(rc, err, out_dir)
    lines = err.splitlines()
    assert "3 problem(s)" in lines[0]
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["extra", "d_model", "vocab_size"]


@pytest.mark.parametrize("case", ["nan_leaf", "output_is_input", "output_is_directory", "checkpoint_is_directory",
                                  "checkpoint_missing", "checkpoint_not_a_pickle", "config_missing"])
def test_bad_input_in_a_real_process_has_no_traceback(tmp_path, case):
    """Through `python -m converters`, as users run it: stderr is the error alone."""
    config = str(golden_dir("language") / "config.json")
    source = tmp_path / "ckpt.pickle"
    source.write_bytes((golden_dir("language") / "checkpoint.pickle").read_bytes())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    output, expected = str(out_dir / "lm.safetensors"), []
    if case == "nan_leaf":
        import pickle

        from converters import load_haiku_checkpoint

        params = {m: dict(v) for m, v in load_haiku_checkpoint(source).params.items()}
        params["embedding_decoder"]["bias"] = np.full_like(params["embedding_decoder"]["bias"], np.nan)
        source.write_bytes(pickle.dumps(params))
        expected = ["params:embedding_decoder/bias: non-finite"]
    elif case == "output_is_input":
        output, expected = str(source), ["is the input checkpoint"]
    elif case == "output_is_directory":
        output, expected = str(out_dir), ["is a directory"]
    elif case == "checkpoint_is_directory":
        source, expected = out_dir, []
    elif case == "checkpoint_missing":
        source, expected = tmp_path / "nope.pickle", ["nope.pickle"]
    elif case == "checkpoint_not_a_pickle":
        source.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
        expected = []
    elif case == "config_missing":
        config, expected = str(tmp_path / "nope.json"), ["nope.json", "cannot read"]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = _cli("language", str(source), "--config", config, "-o", output)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("perceiver-convert: error: ") and "Traceback" not in result.stderr, result.stderr
    for part in expected:
        assert part in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before and list(out_dir.iterdir()) == []


@pytest.mark.parametrize("args", [
    ["chess", "x.pickle", "--config", "c.json", "-o", "o.st"],  # unknown task
    ["language", "x.pickle", "--config", "c.json"],  # no output
    ["language", "x.pickle", "-o", "o.st"],  # neither config nor preset
    ["language", "x.pickle", "--config", "c.json", "--preset", "optical_flow", "-o", "o.st"],  # both
    ["language", "x.pickle", "--preset", "no_such_preset", "-o", "o.st"],
    ["language", "x.pickle", "--preset", "optical_flow", "-o", "o.st"],  # a preset of another task
])
def test_bad_arguments_exit_2(tmp_path, capsys, args):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "perceiver-convert: error:" in err and "Traceback" not in err


def test_float16_conversion_is_reported_on_stderr(tmp_path):
    import pickle

    from converters import load_haiku_checkpoint

    params = {m: dict(v) for m, v in load_haiku_checkpoint(golden_dir("language") / "checkpoint.pickle").params.items()}
    params["embedding_decoder"]["bias"] = params["embedding_decoder"]["bias"].astype(np.float16)
    source = tmp_path / "half.pickle"
    source.write_bytes(pickle.dumps(params))
    result = _cli("language", str(source), "--config", str(golden_dir("language") / "config.json"),
                  "-o", str(tmp_path / "lm.safetensors"))
    assert result.returncode == 0, result.stderr
    assert "params:embedding_decoder/bias: converting float16 values to float32" in result.stderr


@pytest.mark.parametrize("kind", ["too_large", "device", "fifo"])
def test_config_that_is_not_a_small_regular_file_is_refused_unread(tmp_path, capsys, kind):
    # 300 MB of spaces took 817 MB RSS; /dev/zero was read until memory ran out.
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    config, expected = tmp_path / "config.json", "not a regular file"
    if kind == "too_large":
        with open(config, "wb") as f:
            f.truncate((1 << 20) + 1)  # sparse: the size is what is refused
        expected = "1,048,577 bytes; at most 1,048,576"
    elif kind == "device":
        config = Path("/dev/zero")
    else:
        os.mkfifo(config)  # opening it must not wait for a writer
    rc = main(["language", str(golden_dir("language") / "checkpoint.pickle"), "--config", str(config),
               "-o", str(out_dir / "x.st")])
    _assert_clean_failure(rc, capsys.readouterr().err, out_dir, str(config), expected)


def test_an_error_without_a_message_is_named_by_its_type(capsys):
    from converters.cli_support import write_or_report

    def out_of_memory():
        raise MemoryError
    assert write_or_report("perceiver-convert", out_of_memory, (MemoryError,)) == 1
    assert capsys.readouterr().err == "perceiver-convert: error: MemoryError\n"  # was "error: " and nothing


def test_an_existing_output_is_replaced_only_with_force_and_the_config_never(tmp_path, capsys):
    """As perceiver-zoo's --output: a rerun replaces nothing unasked; the config file is an input, never replaced."""
    source = str(golden_dir("language") / "checkpoint.pickle")
    config = tmp_path / "config.json"
    config.write_bytes((golden_dir("language") / "config.json").read_bytes())
    out = tmp_path / "lm.safetensors"
    out.write_bytes(b"an earlier conversion")
    assert main(["language", source, "--config", str(config), "-o", str(out)]) == 1
    assert capsys.readouterr().err.strip().endswith(f"output {out} exists; pass --force (overwrite=True) to replace it")
    assert out.read_bytes() == b"an earlier conversion"
    assert main(["language", source, "--config", str(config), "-o", str(config), "--force"]) == 1
    assert f"output {config} is the config {config} (or a link to it)" in capsys.readouterr().err
    assert config.read_bytes() == (golden_dir("language") / "config.json").read_bytes()
    assert main(["language", source, "--config", str(config), "-o", str(out), "--force"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}" and out.read_bytes()[:8] != b"an earli"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "lm.safetensors"]


@pytest.mark.parametrize("error, shown", [
    (OSError(errno.ENOSPC, "No space left on device"), "[Errno 28] No space left on device"),
    (MemoryError(), "MemoryError"),  # no message: the type is shown
], ids=["ENOSPC", "MemoryError"])
def test_a_full_disk_or_exhausted_memory_is_one_line_not_a_traceback(tmp_path, capsys, monkeypatch, error, shown):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(cli, "convert", fail)  # what main calls to write the file
    rc = main(["language", str(golden_dir("language") / "checkpoint.pickle"), "--config",
               str(golden_dir("language") / "config.json"), "-o", str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert err.splitlines() == [f"perceiver-convert: error: {shown}"], err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
