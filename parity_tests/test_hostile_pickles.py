"""The hostile checkpoint corpus: each case is refused with its manifest's class and message, in a capped child.

A case that crashed the interpreter, exhausted memory or hung would fail its own test (the child is
killed), not the suite. The memory cap is far below what any bomb in the corpus asks for.
"""

import json

import pytest

from .hostile_pickles import EXTENSION_SETUP, GOLDEN, HOSTILE, READER_ONLY, build, manifest_text
from .sandbox import run_isolated

CASES = json.loads((HOSTILE / "manifest.json").read_text())["cases"]
CHILD_MEM_MB = 1536  # numpy + the reader; every bomb in the corpus asks for gigabytes or more
CHILD_TIMEOUT_S = 60

# The child reads the case, catches only the reader's own refusals (anything else escapes and is
# reported by the sandbox as a failure), and reports the allow-listed FlatMapping's attributes
# afterwards: a BUILD or EXT case that got through would have changed or bypassed them.
_READ = READER_ONLY + """
{setup}
from converters.checkpoint_globals import ALLOWED_GLOBALS
from converters.checkpoint_reader import load_haiku_checkpoint
from converters.reader_errors import CheckpointReadError
try:
    load_haiku_checkpoint({path!r})
    outcome = None
except CheckpointReadError as exc:
    outcome = [type(exc).__name__, str(exc)]
flat = ALLOWED_GLOBALS[("haiku._src.data_structures", "FlatMapping")]
return {{"refusal": outcome, "standin": [flat.name, hasattr(flat, "__dict__"), getattr(flat, "__qualname__", None)]}}
"""


def test_generator_reproduces_the_committed_corpus():
    cases, files = build()
    on_disk = {p.name for p in HOSTILE.iterdir()} - {"manifest.json"}
    assert on_disk == set(files), "run `python -m parity_tests.hostile_pickles` and commit the result"
    for name, data in files.items():
        assert (HOSTILE / name).read_bytes() == data, name
    assert (HOSTILE / "manifest.json").read_text() == manifest_text(cases)


def test_corpus_covers_every_opcode_family_and_bomb():
    names = {c["name"] for c in CASES}
    required = {"global_os_system", "stack_global_eval", "inst", "obj", "newobj", "newobj_ex", "reduce_on_dict",
                "build_on_flatmapping", "ext1", "ext2", "ext4", "persid", "binpersid", "scalar_void_bomb",
                "ndarray_1e12", "binbytes8_2p60", "ndarray_stride0", "ndarray_bufferless", "tuple_key_200k_deep",
                "list_100k_deep", "tuple_5000_deep_value", "torch_zip", "safetensors", "random_bytes", "empty",
                "text_file", "int_module_key", "leaf_c8", "leaf_u1", "leaf_s4", "leaf_structured", "leaf_object"}
    assert required <= names, sorted(required - names)
    assert sum(n.startswith("truncated_") for n in names) >= 5


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_hostile_case_is_refused_cleanly(case):
    path = HOSTILE / case["file"]
    result = run_isolated(_READ.format(setup=case["setup"] or "", path=str(path)),
                          mem_mb=CHILD_MEM_MB, timeout_s=CHILD_TIMEOUT_S)
    assert result.ok, f"{case['name']}: {result.describe()}"
    refusal = result.value["refusal"]
    assert refusal is not None, f"{case['name']} was accepted"
    error, message = refusal
    assert error == case["error"], f"{case['name']}: {error}: {message}"
    assert case["message"] in message, message
    assert str(path) in message, f"the message does not name the file: {message}"
    assert result.value["standin"] == ["haiku._src.data_structures.FlatMapping", False, None]


def test_perceiver_convert_refuses_every_case_with_one_line_and_exit_1(tmp_path):
    # One child for the whole corpus (torch is imported once); a crash would fail this test alone.
    output, config = tmp_path / "out.safetensors", GOLDEN / "language" / "config.json"
    code = f"""
import contextlib, io, json
exec({EXTENSION_SETUP!r})  # registered once for the EXT cases; harmless to the others
from converters.cli import main
results = {{}}
for case in json.loads(open({str(HOSTILE / "manifest.json")!r}).read())["cases"]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["language", {str(HOSTILE)!r} + "/" + case["file"], "--config", {str(config)!r},
                   "-o", {str(output)!r}])
    results[case["name"]] = [rc, err.getvalue()]
return results
"""
    result = run_isolated(code, timeout_s=300)
    assert result.ok, result.describe()
    for case in CASES:
        rc, stderr = result.value[case["name"]]
        assert rc == 1, (case["name"], rc, stderr)
        assert stderr.startswith("perceiver-convert: error: ") and stderr.count("\n") == 1, (case["name"], stderr)
        assert case["message"] in stderr and "Traceback" not in stderr, (case["name"], stderr)
    assert not output.exists()
