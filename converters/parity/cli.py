"""`perceiver-parity TASK --checkpoint PICKLE --config CONFIG.json [--inputs IO.npz] ...`

Runs the JAX reference and the converted Torch model on the same inputs,
prints a per-output error table, optionally writes the report as JSON, and
exits 0 when every output agrees within the tolerance, 1 when one does not,
2 for bad arguments or inputs, a device that is not there or a report that
cannot be written (--json or stdout), 3 when the run itself fails (out of
memory, an XLA error) or on an internal error (with its traceback), 130 when
interrupted (Ctrl-C) and 141 when stdout's reader goes away (| head).

`--dtype bfloat16|float16` runs Torch in that precision (`--autocast`: a
float32 model under torch.autocast instead of model.to(dtype)) and `--dtype
tf32` a float32 Torch model with TF32 matmuls and convolutions (real on
`--device cuda`; emulated on the CPU by rounding their inputs to TF32,
`--tf32-rounding nearest|truncate`), all against JAX in float32; the
tolerance is then the task's measured error budget
(converters/parity/budgets.json), which the report names.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path

from perceiver_torch.cli_exit import print_out
from perceiver_torch.registry import TASKS
from perceiver_torch.serialization import atomic_write
from perceiver_torch.version import add_version_flag
from perceiver_torch.zoo.token import TokenSafeParser

from ..cli_support import unwritable_output
from .harness import DEVICES, DTYPES, REFERENCES, DeviceUnavailable, run_parity
from .tf32_emulation import ROUNDINGS


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < math.inf:  # an infinite tolerance would pass any finite error
        raise argparse.ArgumentTypeError(f"expected a finite non-negative number, got {text!r}")
    return value


# The example inputs' numpy seed; kept to 32 bits, as JAX keeps its seeds (without x64).
MAX_SEED = 2**32 - 1


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to {MAX_SEED}, got {text!r}")
    return value


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def parser() -> argparse.ArgumentParser:
    p = TokenSafeParser(prog="perceiver-parity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_flag(p)
    p.add_argument("task", choices=TASKS)
    p.add_argument("--checkpoint", required=True, type=_existing_file, help="upstream Haiku .pickle/.pystate")
    p.add_argument("--config", required=True, type=_existing_file, help="config.json (golden layout)")
    p.add_argument("--inputs", type=_existing_file,
                   help="io.npz with input/... arrays (channels-last, as upstream); output/... arrays in it are "
                        "reported against too. Default: the reference's example inputs for --seed.")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the example inputs when --inputs is not given")
    p.add_argument("--device", choices=DEVICES, default="cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                   help="float64 runs JAX with x64 and Torch in double; bfloat16 / float16 / tf32 run Torch in "
                        "that precision against JAX in float32, checked against the measured budget")
    p.add_argument("--autocast", action="store_true",
                   help="with --dtype bfloat16/float16: a float32 model under torch.autocast, not model.to(dtype)")
    p.add_argument("--tf32-rounding", choices=ROUNDINGS, default=None,
                   help="with --dtype tf32 on the CPU (emulated TF32): how matmul/conv inputs are rounded to TF32; "
                        "default nearest (ties to even). Real TF32 on CUDA rounds as cuBLAS/cuDNN do.")
    p.add_argument("--reference", choices=REFERENCES, default="ours",
                   help="'ours' (converters.jax_reference) or 'upstream' (DeepMind's code, --upstream-path)")
    p.add_argument("--upstream-path", type=Path, help="directory holding DeepMind's perceiver package")
    p.add_argument("--atol", type=_tolerance, default=None,
                   help="default 1e-4 (float32) / 1e-9 (float64) / the measured budget (reduced precisions)")
    p.add_argument("--rtol", type=_tolerance, default=None,
                   help="default 1e-4 (float32) / 1e-9 (float64) / the measured budget (reduced precisions)")
    p.add_argument("--json", type=Path, help="write the report here (atomically)")
    return p


DEFAULT_TOLERANCE = {"float32": 1e-4, "float64": 1e-9}
INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command ended by Ctrl-C


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.reference == "upstream" and args.upstream_path is None:
        p.error("--reference upstream needs --upstream-path DIR (DeepMind's perceiver code).")
    if args.upstream_path is not None and args.reference != "upstream":
        p.error("--upstream-path is only used with --reference upstream.")
    if args.upstream_path is not None and not args.upstream_path.is_dir():
        p.error(f"--upstream-path {args.upstream_path} is not a directory.")
    if args.autocast and args.dtype not in ("bfloat16", "float16"):
        p.error(f"--autocast needs --dtype bfloat16 or float16, not {args.dtype}.")
    if args.tf32_rounding is not None and (args.dtype != "tf32" or args.device == "cuda"):
        p.error("--tf32-rounding is for emulated TF32: --dtype tf32 on --device cpu.")
    atol, rtol = args.atol, args.rtol
    if args.dtype in DEFAULT_TOLERANCE:
        tolerance = DEFAULT_TOLERANCE[args.dtype]
        atol = tolerance if atol is None else atol
        rtol = tolerance if rtol is None else rtol
    elif (atol is None) != (rtol is None):
        p.error("give both --atol and --rtol to replace the measured budget of a reduced precision, or neither.")
    if args.json is not None and (problem := unwritable_output(args.json)):
        p.error(f"--json {problem}")
    written: list[Path] = []  # the --json report, once it is in place
    try:
        with _noticed_interrupts() as interrupts:
            status = _run(args, atol, rtol, written)
        if not interrupts:
            return status
    except KeyboardInterrupt:
        pass
    # The report is written atomically: it is there whole or not at all.
    print(f"perceiver-parity: interrupted; {f'{written[0]} was written' if written else 'nothing was written'}.",
          file=sys.stderr)
    if argv is None:  # the program itself: JAX work cut short can crash the interpreter's teardown (SIGSEGV)
        with contextlib.suppress(OSError):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(INTERRUPTED)
    return INTERRUPTED


@contextlib.contextmanager
def _noticed_interrupts() -> Iterator[list[bool]]:
    """A list that Ctrl-C appends to, raising KeyboardInterrupt as usual. One raised inside a garbage-collector
    callback (JAX has one) cannot propagate and the run goes on: it is not forgotten, nor printed as a traceback."""
    seen: list[bool] = []
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield seen  # SIGINT ignored or handled by someone else: theirs to keep
        return

    def interrupt(signum, frame):
        seen.append(True)
        raise KeyboardInterrupt

    def unraisable(info):
        if not isinstance(info.exc_value, KeyboardInterrupt):
            hook(info)

    previous, hook = signal.signal(signal.SIGINT, interrupt), sys.unraisablehook
    sys.unraisablehook = unraisable
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = hook


def _run(args: argparse.Namespace, atol: float | None, rtol: float | None, written: list[Path]) -> int:
    try:
        report = run_parity(args.task, args.config, checkpoint=args.checkpoint, inputs=args.inputs, seed=args.seed,
                            device=args.device, dtype=args.dtype, reference=args.reference,
                            upstream_path=args.upstream_path, atol=atol, rtol=rtol,
                            mode="autocast" if args.autocast else "cast", tf32_rounding=args.tf32_rounding)
    except (ImportError, DeviceUnavailable, ValueError, OSError) as exc:
        # ConfigError, InputsError, ConversionError, CheckpointReadError and UnsupportedTaskError are ValueErrors;
        # other RuntimeErrors (CUDA out of memory, XLA runtime errors) are failures of the run: exit 3 below.
        print(f"perceiver-parity: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError:  # met while running (out of memory, XLA): not bad input, nor "Torch and JAX disagree"
        traceback.print_exc()
        print("perceiver-parity: the run failed (above)", file=sys.stderr)
        return 3
    except Exception:  # a bug, not bad input: exit 1 would read as "Torch and JAX disagree"
        traceback.print_exc()
        print("perceiver-parity: internal error (above); please report it", file=sys.stderr)
        return 3
    problems = []
    # The file first: a reader of stdout that stops early (| head) does not keep the report from being written.
    if args.json is not None:
        text = json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n"
        try:
            atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
            written.append(args.json)
        except OSError as exc:
            problems.append(f"cannot write {args.json}: {exc.strerror or exc}")
    try:
        gone = print_out(report.table() + (f"\nwrote {args.json}" if written else ""))
    except OSError as exc:  # a full disk, /dev/full: the table is not where it was asked for
        gone = None
        problems.append(f"cannot write to stdout: {exc.strerror or exc}")
    for problem in problems:
        print(f"perceiver-parity: error: {problem}", file=sys.stderr)
    return 2 if problems else gone or (0 if report.passed else 1)


if __name__ == "__main__":
    sys.exit(main())
