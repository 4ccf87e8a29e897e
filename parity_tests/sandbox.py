"""Run untrusted-input checks in a child process with memory and time caps.

A hostile file that crashes the interpreter (segfault), exhausts memory or hangs must fail its
own test, not kill or stall the suite; so each such case runs here, in a fresh Python with an
address-space limit and a wall-clock timeout, and reports what happened as a `SandboxResult`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Enough for torch + numpy + a small model; far below what a memory bomb asks for.
DEFAULT_MEM_MB = 3072
DEFAULT_TIMEOUT_S = 60.0

_RESULT_MARK = "@@SANDBOX_RESULT@@"

# The child runs the caller's code inside this frame: whatever it raises is reported by type and
# message (a clean refusal is an exception the test expects), anything else it returns is JSON.
_WRAPPER = """
import resource
# Limits first, before anything is imported or allocated (set here, not in a fork hook: forking a
# process that runs JAX's threads is unsafe).
resource.setrlimit(resource.RLIMIT_AS, ({mem_bytes}, {mem_bytes}))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a segfault leaves no core file behind
import json, sys, traceback
def _body():
{body}
try:
    _value = _body()
    _out = {{"ok": True, "value": _value}}
except BaseException as _exc:
    _out = {{"ok": False, "type": type(_exc).__module__ + "." + type(_exc).__qualname__,
            "message": str(_exc), "traceback": traceback.format_exc()}}
sys.stdout.write("\\n{mark}" + json.dumps(_out, default=str) + "\\n")
"""


@dataclass
class SandboxResult:
    returncode: int
    ok: bool  # the code returned normally
    value: object = None  # what it returned (JSON round-tripped)
    error_type: str | None = None  # "module.QualName" of the exception it raised
    error_message: str | None = None
    traceback: str | None = None
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False

    @property
    def crashed(self) -> bool:
        """Killed by a signal (segfault, abort) or exited without reporting."""
        return not self.timed_out and self.error_type is None and not self.ok

    def describe(self) -> str:
        if self.timed_out:
            return "timed out"
        if self.returncode < 0:
            return f"killed by signal {signal.Signals(-self.returncode).name}; stderr tail: {self.stderr[-800:]}"
        if self.ok:
            return f"returned {self.value!r}"
        if self.error_type:
            return f"raised {self.error_type}: {self.error_message}"
        return f"exit {self.returncode} without a result; stderr tail: {self.stderr[-800:]}"


def run_isolated(code: str, *, mem_mb: int = DEFAULT_MEM_MB, timeout_s: float = DEFAULT_TIMEOUT_S,
                 cwd: Path | None = None, env: dict | None = None) -> SandboxResult:
    """Run `code` (a function body: it may `return` a JSON-able value) in a capped child Python."""
    body = textwrap.indent(textwrap.dedent(code).strip() or "pass", "    ")
    script = _WRAPPER.format(body=body, mark=_RESULT_MARK, mem_bytes=mem_mb * 1024 * 1024)
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), child_env.get("PYTHONPATH", "")) if p)
    # Few threads: BLAS and torch reserve address space per thread, which a tight RLIMIT_AS counts.
    child_env.setdefault("OMP_NUM_THREADS", "1")
    child_env.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout_s,
                              cwd=cwd or REPO, env=child_env)
    except subprocess.TimeoutExpired as exc:
        return SandboxResult(returncode=-1, ok=False, timed_out=True,
                             stdout=_text(exc.stdout), stderr=_text(exc.stderr))
    result = SandboxResult(returncode=proc.returncode, ok=False, stdout=proc.stdout, stderr=proc.stderr)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_MARK):
            report = json.loads(line[len(_RESULT_MARK):])
            result.ok = report["ok"]
            result.value = report.get("value")
            result.error_type = report.get("type")
            result.error_message = report.get("message")
            result.traceback = report.get("traceback")
            break
    return result


def _text(data) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data
