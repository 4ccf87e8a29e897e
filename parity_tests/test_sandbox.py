"""The sandbox that hostile-input tests run in: each failure mode is reported, not suffered."""

from .sandbox import run_isolated


def test_ok():
    r = run_isolated("return 1 + 1")
    assert r.ok and r.value == 2, r.describe()

def test_raise():
    r = run_isolated("raise ValueError('bad thing')")
    assert not r.ok and r.error_type == "builtins.ValueError" and r.error_message == "bad thing"

def test_segv():
    r = run_isolated("import ctypes\nctypes.string_at(0)")
    assert r.crashed and r.returncode < 0, r.describe()

def test_mem():
    r = run_isolated("x = bytearray(2 * 1024**3)\nreturn len(x)", mem_mb=1024)
    assert r.error_type == "builtins.MemoryError", r.describe()

def test_timeout():
    r = run_isolated("import time\ntime.sleep(5)", timeout_s=1)
    assert r.timed_out
