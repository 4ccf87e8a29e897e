"""The divergence report: each switch measured alone, 'none' agreeing with ours, as a table and JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from converters.transformers.divergence import main
from parity_tests.conftest import golden_dir
from parity_tests.transformers_support import agree_atol, golden_magnitude

REPO = Path(__file__).resolve().parents[1]
# The smallest effect a real divergence has on these fixtures' outputs (the GELU's is ~3e-4).
VISIBLE = 1e-4


def test_report_on_the_learned_classifier_fixture(tmp_path, capsys):
    assert main(["--golden", str(golden_dir("imagenet_learned")), "--json", str(tmp_path / "r.json")]) == 0
    table = capsys.readouterr().out
    rows = {row["setting"]: row for row in json.loads((tmp_path / "r.json").read_text())}
    assert list(rows) == ["none", "gelu", "query_residual", "all"]
    atol = agree_atol(golden_magnitude("imagenet_learned"))  # float32 rounding of differently ordered sums
    assert rows["none"]["outputs"]["logits"]["max_abs"] <= atol
    assert rows["none"]["ours_vs_upstream"]["logits"]["max_abs"] <= atol
    for setting in ("gelu", "query_residual", "all"):
        assert rows[setting]["outputs"]["logits"]["max_abs"] > VISIBLE, setting
        assert f"| golden/imagenet_learned | {setting} | logits |" in table
    assert rows["all"]["on"] == ["gelu", "query_residual"]


def test_report_separates_padded_positions_for_language(tmp_path):
    assert main(["--golden", str(golden_dir("language")), "--json", str(tmp_path / "r.json")]) == 0
    rows = {row["setting"]: row for row in json.loads((tmp_path / "r.json").read_text())}
    assert list(rows) == ["none", "gelu", "tokenizer", "all"]
    none = rows["none"]["outputs"]
    atol = agree_atol(golden_magnitude("language"))  # float32 rounding of differently ordered sums
    assert none["logits (real bytes)"]["max_abs"] <= atol and none["logits (real bytes)"]["greedy_agree"] == 1
    assert none["logits (padding: query_mask)"]["max_abs"] > VISIBLE  # transformers drops the decoder's query mask
    assert rows["tokenizer"]["outputs"]["logits (real bytes)"]["greedy_agree"] < 1


def test_bad_source_is_an_error_without_traceback(tmp_path, capsys):
    assert main(["--golden", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("divergence: error:") and "not a golden fixture folder" in err


def test_json_path_is_checked_first_and_written_atomically(tmp_path, capsys, monkeypatch):
    import pytest

    import converters.transformers.divergence as divergence

    (tmp_path / "a_file").write_text("x")
    with pytest.raises(SystemExit) as info:  # was a traceback after the whole run
        main(["--golden", str(golden_dir("imagenet_learned")), "--json", str(tmp_path / "a_file" / "r.json")])
    assert info.value.code == 2 and f"{tmp_path / 'a_file'} is not a directory" in capsys.readouterr().err
    writes = []

    def refuse(path, write):
        writes.append(path)
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(divergence, "atomic_write", refuse)  # was a plain write_text: half a file on failure
    assert main(["--golden", str(golden_dir("imagenet_learned")), "--json", str(tmp_path / "r.json")]) == 1
    err = capsys.readouterr().err
    assert writes == [tmp_path / "r.json"] and f"cannot write {tmp_path / 'r.json'}: Permission denied" in err


def test_a_closed_stdout_ends_quietly_after_the_rows_are_written(tmp_path):
    """`... | head -1`: exit 141 without a traceback (was BrokenPipeError, exit 1), the --json rows written first."""
    out = tmp_path / "r.json"
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before the report writes a byte: every write meets a closed pipe
    with subprocess.Popen([sys.executable, "-m", "converters.transformers.divergence", "--golden",
                           str(golden_dir("imagenet_learned")), "--json", str(out)], stdout=write_end,
                          stderr=subprocess.PIPE, cwd=REPO) as cli:
        os.close(write_end)
        err = cli.stderr.read() if cli.stderr else b""
    assert (cli.returncode, err) == (141, b"")
    assert [row["setting"] for row in json.loads(out.read_text())] == ["none", "gelu", "query_residual", "all"]


def test_an_unknown_preset_is_a_usage_error_naming_the_known_ones(capsys):
    with pytest.raises(SystemExit) as info:  # was a repr-quoted KeyError, exit 1
        main(["--preset", "nope"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "argument --preset: invalid choice: 'nope'" in err
    assert "'language_perceiver_io_bytes'" in err


def test_a_repeated_golden_measures_every_folder(capsys, monkeypatch):
    import converters.transformers.divergence as divergence

    seen = []
    monkeypatch.setattr(divergence, "golden_case", lambda folder: seen.append(folder) or folder)
    monkeypatch.setattr(divergence, "report", lambda case: [])
    assert main(["--golden", "a", "b", "--golden", "c"]) == 0  # kept only c
    assert seen == [Path("a"), Path("b"), Path("c")]


def test_a_full_stdout_is_an_error_line(capsys, monkeypatch):
    import converters.transformers.divergence as divergence

    def full(text):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(divergence, "golden_case", lambda folder: folder)
    monkeypatch.setattr(divergence, "report", lambda case: [])
    monkeypatch.setattr(divergence, "print_out", full)
    assert main(["--golden", "a"]) == 1  # was an OSError traceback
    assert capsys.readouterr().err == "divergence: error: cannot write to stdout: No space left on device\n"


def test_a_negative_seed_is_a_usage_error_and_ctrl_c_one_line(tmp_path, capsys, monkeypatch):
    import converters.transformers.divergence as divergence

    with pytest.raises(SystemExit) as info:  # numpy refused it later, deep in the run
        main(["--preset", "language_perceiver_io_bytes", "--seed", "-1"])
    assert info.value.code == 2 and "--seed must be an integer from 0 to 4294967295; got -1" in capsys.readouterr().err

    def interrupted(case):  # Ctrl-C while a case is measured
        raise KeyboardInterrupt

    monkeypatch.setattr(divergence, "golden_case", lambda folder: folder)
    monkeypatch.setattr(divergence, "report", interrupted)
    assert main(["--golden", "a", "--json", str(tmp_path / "rows.json")]) == 130  # was a traceback
    assert capsys.readouterr().err == "divergence: interrupted; nothing was written.\n"
    assert list(tmp_path.iterdir()) == []
