"""Measure every task's reduced-precision error against the float32 JAX reference, and derive the budgets.

    python benchmarks/measure_precision.py                       # golden fixtures only (seconds)
    python benchmarks/measure_precision.py --released            # + released-size random weights (CPU minutes)
    python benchmarks/measure_precision.py --released --write-budgets

For each case (a golden fixture: DeepMind's own float32 outputs; or a released
configuration with perturbed random weights, run through the JAX reference in
float32) the Torch model runs in float32, bfloat16 and float16, cast
(`model.to(dtype)`) and under autocast, and with each float32 island of
`perceiver_torch.layers.precision` switched off in turn (the ablations, bf16 and
fp16 cast); and in TF32 emulated on the CPU: the float32 model with its matmul
and convolution inputs rounded to TF32 (`converters.parity.tf32_emulation`),
once to nearest and once truncated, recorded as "tf32/cast/nearest" and
"tf32/cast/truncate", and "tf32/cast" the worse of the two per output and per
agreement measure (cuBLAS does not document its rounding). Prints per case and precision the normalised error
max|torch - ref| / max|ref| per output and the task-level agreement, writes
every figure to --out (JSON), and with --write-budgets turns them into
`converters/parity/budgets.json`: per task, precision and mode, the
largest normalised error over all cases times MARGIN, and agreement allowed
MARGIN times the largest measured shortfall. float16 runs on the CPU for the
golden fixtures, and with --released-fp16 for the released models too: CPUs
with AVX512-FP16 (e.g. Sapphire Rapids) run float16 matmuls about as fast as
float32 ones, others at ~1 GFLOP/s, which makes released sizes impractical; without it, the released
cases keep the float16 runs already in --out (measured earlier on such a CPU), so the budgets derived from
a rerun still cover them.
`--runs tf32/cast` measures only the runs named and merges them into the
cases already in --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from converters import convert_tree, jax_reference, load_config, load_haiku_checkpoint
from converters.checkpoint_reader import checkpoint_from_tree
from converters.parity.harness import load_inputs
from converters.parity.precision import (
    agreement,
    higher_is_better,
    model_dtype,
    normalised_error,
    precision_context,
)
from converters.parity.tf32_emulation import ROUNDINGS
from converters.tasks import run_upstream_layout
from perceiver_torch.layers.precision import fp32_islands
from perceiver_torch.registry import build_model, preset

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "parity_tests" / "fixtures" / "golden"
BUDGETS = ROOT / "converters" / "parity" / "budgets.json"
MARGIN = 2.0

GOLDEN_CASES = {"language": "language", "imagenet_learned": "imagenet", "imagenet_fourier": "imagenet",
                "imagenet_conv": "imagenet", "optical_flow": "optical_flow",
                "video_autoencoding": "video_autoencoding"}
RELEASED_CASES = {"language_perceiver_io_bytes": 1, "imagenet_learned_position_encoding": 2,
                  "imagenet_fourier_position_encoding": 2, "imagenet_conv_preprocessing": 2,
                  "optical_flow": 1, "video_autoencoding": 1}  # preset -> batch
RUNS = [("float32", "cast"), ("bfloat16", "cast"), ("bfloat16", "autocast"), ("float16", "cast"),
        ("float16", "autocast"), ("tf32", "cast")]
TF32_SOURCE = "emulated on CPU (matmul/conv inputs rounded to TF32, both roundings, worst kept)"
ABLATIONS = {"no_position_features": {"position_features": False}, "no_layer_norm": {"layer_norm": False},
             "no_residual": {"residual": False}, "no_final_projection": {"final_projection": False},
             "attention_fp32": {"attention": True}}


def _torch_model(task: str, config: dict, haiku) -> torch.nn.Module:
    model = build_model(task, config)
    arrays = convert_tree(task, haiku, config)
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, strict=True)
    return model.eval()


def golden_case(family: str):
    task = GOLDEN_CASES[family]
    config = load_config(GOLDEN / family / "config.json")
    model = _torch_model(task, config, load_haiku_checkpoint(GOLDEN / family / "checkpoint.pickle"))
    inputs, expected = load_inputs(GOLDEN / family / "io.npz")
    return task, model, inputs, expected, 0.0


def released_case(name: str, batch: int):
    entry = preset(name)
    task, config = entry["task"], entry["config"]
    inputs = jax_reference.example_inputs(task, config, batch=batch, seed=0)
    params, state = jax_reference.init(task, config, inputs, seed=0, perturb=True)
    haiku = checkpoint_from_tree(jax_reference.checkpoint_tree(task, params, state), name)
    import jax

    start = time.perf_counter()
    with jax.default_device(jax.devices("cpu")[0]), jax.default_matmul_precision("highest"):
        reference = jax_reference.apply(task, config, haiku.params, haiku.state, inputs)
    jax_s = time.perf_counter() - start
    return task, _torch_model(task, config, haiku), inputs, reference, jax_s


def run_torch(task, model, inputs, precision, mode, islands=None, tf32_rounding=None):
    dtype = model_dtype(precision, mode) if precision != "float32" else torch.float32
    m = copy.deepcopy(model).to(dtype) if dtype != torch.float32 else model
    start = time.perf_counter()
    with fp32_islands(**(islands or {})):
        if precision == "float32":
            out = run_upstream_layout(task, m, inputs, "cpu", torch.float32)
        else:
            with precision_context(precision, mode, "cpu", tf32_rounding):
                out = run_upstream_layout(task, m, inputs, "cpu", dtype)
    return out, time.perf_counter() - start


def figures(task, out, reference, inputs) -> dict:
    return {"error": {name: normalised_error(out[name], reference[name]) for name in reference},
            "max_abs": {name: float(np.abs(np.asarray(out[name], np.float64) - reference[name]).max())
                        for name in reference},
            "agreement": agreement(task, out, reference, inputs)}


def worst_of(runs: dict) -> dict:
    """Per output and per agreement measure, the worse figure of `runs` ({name: figures})."""
    first = next(iter(runs.values()))
    worst = {"error": {}, "max_abs": {}, "agreement": {}, "worst_of": sorted(runs),
             "seconds": sum(r["seconds"] for r in runs.values())}
    for field in ("error", "max_abs"):
        worst[field] = {name: max(r[field][name] for r in runs.values()) for name in first[field]}
    for metric in first["agreement"]:
        pick = min if higher_is_better(metric) else max
        worst["agreement"][metric] = pick(r["agreement"][metric] for r in runs.values())
    return worst


def measure(case: str, task, model, inputs, reference, ablate: bool, fp16: bool, runs=None) -> dict:
    result = {"task": task, "runs": {}}
    for precision, mode in RUNS:
        key = f"{precision}/{mode}"
        if (precision == "float16" and not fp16) or (runs is not None and key not in runs):
            continue
        if precision == "tf32":
            for rounding in ROUNDINGS:
                out, seconds = run_torch(task, model, inputs, precision, mode, tf32_rounding=rounding)
                result["runs"][f"{key}/{rounding}"] = {**figures(task, out, reference, inputs), "seconds": seconds}
            result["runs"][key] = worst_of({r: result["runs"][f"{key}/{r}"] for r in ROUNDINGS})
        else:
            out, seconds = run_torch(task, model, inputs, precision, mode)
            result["runs"][key] = {**figures(task, out, reference, inputs), "seconds": seconds}
        if ablate and precision not in ("float32", "tf32") and mode == "cast":
            for name, islands in ABLATIONS.items():
                out, seconds = run_torch(task, model, inputs, precision, mode, islands)
                result["runs"][f"{key}/{name}"] = {**figures(task, out, reference, inputs), "seconds": seconds}
        run = result["runs"][key]
        print(f"{case:36s} {key:18s} err " + " ".join(f"{k}={v:.2e}" for k, v in run["error"].items())
              + "  " + " ".join(f"{k}={v:.4g}" for k, v in run["agreement"].items()) + f"  ({run['seconds']:.1f}s)",
              flush=True)
    return result


def derive_budgets(results: dict) -> dict:
    """{task: {precision/mode: {"error": {output: budget}, "agreement": {metric: bound}, "source": ...}}}."""
    budgets: dict = {}
    for case, result in results.items():
        for key, run in result["runs"].items():
            if key.count("/") != 1 or key.startswith("float32"):
                continue  # ablations and the float32 baseline give no budget
            entry = budgets.setdefault(result["task"], {}).setdefault(key, {"measured": {}, "cases": []})
            entry["cases"].append(case)
            for name, value in run["error"].items():
                entry["measured"].setdefault(f"error/{name}", []).append(value)
            for name, value in run["agreement"].items():
                entry["measured"].setdefault(f"agreement/{name}", []).append(value)
    out: dict = {}
    for task, per_key in budgets.items():
        for key, entry in per_key.items():
            error, agree, worst = {}, {}, {}
            for name, values in entry["measured"].items():
                kind, metric = name.split("/", 1)
                if kind == "error":
                    worst[name] = max(values)
                    error[metric] = MARGIN * max(values)
                elif higher_is_better(metric):
                    worst[name] = min(values)
                    agree[metric] = max(0.0, 1.0 - MARGIN * (1.0 - min(values)))
                else:
                    worst[name] = max(values)
                    agree[metric] = MARGIN * max(values)
            source = (f"{MARGIN:g} x the worst of {len(entry['cases'])} measured cases "
                      f"({', '.join(sorted(entry['cases']))}), benchmarks/measure_precision.py on CPU")
            if key.startswith("tf32/"):
                source = f"{TF32_SOURCE}; {source}"
            out.setdefault(task, {})[key] = {"error": error, "agreement": agree, "measured_worst": worst,
                                             "source": source}
    return out


def _fmt(metrics: dict, digits: str) -> str:
    return ", ".join(f"{k} {v:{digits}}" for k, v in metrics.items())


PAIRS = {"language": "language_perceiver_io_bytes", "imagenet_learned": "imagenet_learned_position_encoding",
         "imagenet_fourier": "imagenet_fourier_position_encoding", "imagenet_conv": "imagenet_conv_preprocessing",
         "optical_flow": "optical_flow", "video_autoencoding": "video_autoencoding"}


def _pair(results: dict, family: str, key: str, field: str, digits: str) -> str:
    cells = []
    for case in (f"golden/{family}", f"released/{PAIRS[family]}"):
        run = results.get(case, {}).get("runs", {}).get(key)
        cells.append(_fmt(run[field], digits) if run else "not run")
    return " / ".join(cells)


def markdown_tables(results: dict, budgets: dict) -> str:
    """The README's tables: measured figures (golden / released), the budgets, and the island ablations.

    TF32 appears once per rounding in the measured table; its budget is the worse of the two.
    """
    lines = ["| model | precision | max abs error / max abs reference | max abs error | task-level agreement |",
             "|---|---|---|---|---|"]
    for family in PAIRS:
        for key in ("float32/cast", *(f"{p}/{m}" for p, m in RUNS if p not in ("float32", "tf32")),
                    *(f"tf32/cast/{rounding}" for rounding in ROUNDINGS)):
            lines.append(f"| {family} | {key} | {_pair(results, family, key, 'error', '.1e')} | "
                         f"{_pair(results, family, key, 'max_abs', '.1e')} | "
                         f"{_pair(results, family, key, 'agreement', '.3g')} |")
    budget_lines = ["| task | precision | budget: max abs error / max abs reference | budget: agreement |",
                    "|---|---|---|---|"]
    for task, per_key in budgets.items():
        for key, entry in sorted(per_key.items()):
            bounds = ", ".join(f"{k} {'>=' if higher_is_better(k) else '<='} {v:.3g}"
                               for k, v in entry["agreement"].items())
            budget_lines.append(f"| {task} | {key} | {_fmt(entry['error'], '.2e')} | {bounds} |")
    ablations = ["| case | run | " + " | ".join(["all islands", *ABLATIONS]) + " |",
                 "|---|---|" + "---|" * (len(ABLATIONS) + 1)]
    for case, result in results.items():
        for key in result["runs"]:
            if key.count("/") == 1 and f"{key}/{next(iter(ABLATIONS))}" in result["runs"]:
                cells = [result["runs"][key]] + [result["runs"][f"{key}/{name}"] for name in ABLATIONS]
                ablations.append(f"| {case} | {key} | " + " | ".join(
                    ", ".join(f"{v:.2e}" for v in cell["error"].values()) for cell in cells) + " |")
    return "\n\n".join("\n".join(t) for t in (lines, budget_lines, ablations))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--released", action="store_true", help="also the released configurations (random weights)")
    p.add_argument("--only", nargs="*", help="restrict to these golden families / preset names")
    p.add_argument("--released-fp16", action="store_true",
                   help="with --released: float16 on the released models too (needs a CPU with fast float16)")
    p.add_argument("--runs", nargs="*", choices=[f"{p}/{m}" for p, m in RUNS],
                   help="measure only these precision/mode runs, merged into each case's runs already in --out")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "precision_results.json")
    p.add_argument("--write-budgets", action="store_true", help=f"write {BUDGETS.relative_to(ROOT)}")
    p.add_argument("--table", action="store_true", help="print the README tables from --out and stop")
    args = p.parse_args()
    if args.table:
        print(markdown_tables(json.loads(args.out.read_text()), json.loads(BUDGETS.read_text())))
        return
    known = [*GOLDEN_CASES, *(RELEASED_CASES if args.released else ())]
    unknown = sorted(set(args.only or ()) - set(known))
    if unknown:  # it would measure nothing for them and still write --out
        p.error(f"--only {' '.join(unknown)}: no such case{'' if args.released else ' (released ones need --released)'}"
                f"; known: {' '.join(known)}")
    if args.write_budgets and not (args.released or args.only or args.runs):
        p.error("--write-budgets derives the budgets from every case, golden and released: add --released (or "
                "update an existing --out with --only / --runs)")
    torch.manual_seed(0)
    merge = bool(args.only or args.runs)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    results = previous if merge else {}
    cases = [("golden/" + f, lambda f=f: golden_case(f), True, True) for f in GOLDEN_CASES]
    if args.released:
        cases += [("released/" + n, lambda n=n, b=b: released_case(n, b), n.startswith("language"),
                   args.released_fp16) for n, b in RELEASED_CASES.items()]
    for case, make, ablate, fp16 in cases:
        if args.only and case.split("/", 1)[1] not in args.only:
            continue
        start = time.perf_counter()
        task, model, inputs, reference, jax_s = make()
        measured = measure(case, task, model, inputs, reference, ablate, fp16, args.runs)
        total_s = time.perf_counter() - start
        if args.runs and case in results:  # the other runs' figures and timings stay as they were measured
            results[case]["runs"].update(measured["runs"])
        else:
            results[case] = {**measured, "jax_seconds": jax_s, "total_seconds": total_s}
        if not fp16:  # float16 not measured here: keep what was (see the module docstring)
            kept = {k: v for k, v in previous.get(case, {}).get("runs", {}).items()
                    if k.startswith("float16/") and k not in results[case]["runs"]}
            results[case]["runs"].update(kept)
            if kept:
                print(f"{case}: kept {len(kept)} float16 runs measured earlier", flush=True)
        print(f"{case}: {total_s:.0f}s in all (JAX apply {jax_s:.1f}s)", flush=True)
        del model
    args.out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    if args.write_budgets:
        BUDGETS.write_text(json.dumps(derive_budgets(results), indent=1, sort_keys=True) + "\n")
        print(f"wrote {BUDGETS}")


if __name__ == "__main__":
    main()
