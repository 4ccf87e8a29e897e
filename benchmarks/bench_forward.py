"""Forward speed at released size: ours (fp32, bf16 autocast, bf16 weights, compiled) beside transformers and JAX.

Compiled variants: `ours compiled` (torch.compile, fp32) and, with Inductor's weight freezing (the CPU
inference setting: weights become constants, prepacked for oneDNN), `ours compiled frozen` (fp32) and
`ours bf16 compiled frozen` (the model in bfloat16). Opt-in (`--variants`, not run by default: they compile
for minutes): `ours compiled autotuned` and `ours bf16 compiled autotuned`, frozen and with Inductor's
`max_autotune` choosing per matmul between its own C++ GEMM templates and the library kernels.

    PYTHONPATH=$PWD python benchmarks/bench_forward.py [--tasks language optical_flow ...] [--batch-sizes 1 8 32]
        [--rounds 3] [--variants ...] [--device cuda] [--tf32 off|on] [--threads N]

Random weights (`perceiver_torch.build_preset`), eval mode, no grad. Each round runs every variant once
in turn (interleaved, so load from other processes hits all of them alike); the tables give the median
time per forward, the median over rounds of each variant's time divided by ours in fp32 in the same
round, the achieved GFLOP/s (ours' FLOPs, counted once by torch.utils.flop_counter, divided by the
variant's median time) and that as a share of the GEMM peak measured in the same rounds (a
2048x1280 @ 1280x1280 matmul, the language model's shapes, in fp32 and bf16), and peak memory: on
CUDA what the variant's first call allocated at its peak beyond the tensors already resident (every
variant's model and inputs stay allocated); on CPU the process's peak RSS after that call (a high-water
mark, cumulative in the order the variants first ran).

Peers (optional imports, see forward_peers.py): transformers' Perceiver at its released configs in
fp32 and under bf16 autocast; the JAX/Haiku reference under jit in fp32. Task `flow_sintel` times
`estimate_flow` on a 1024x436 (Sintel) frame pair against transformers' model run on the same tiles
by the same tiling code.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

# JAX takes 75% of a GPU's memory when its backend starts (the first task's peer); ours and transformers' later
# tasks and batch sizes would be left the rest. Set before anything imports JAX; a value of your own wins.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

sys.path.insert(0, str(Path(__file__).parent))
import forward_peers  # noqa: E402

from perceiver_torch import build_preset, compile_frozen  # noqa: E402
from perceiver_torch.export import chunk_points  # noqa: E402
from perceiver_torch.flow_tiling import stitch_tiles  # noqa: E402
from perceiver_torch.imagenet_preprocessing import MEAN_RGB, STDDEV_RGB  # noqa: E402

PRESETS = {
    "language": "language_perceiver_io_bytes",
    "imagenet_learned": "imagenet_learned_position_encoding",
    "imagenet_fourier": "imagenet_fourier_position_encoding",
    "imagenet_conv": "imagenet_conv_preprocessing",
    "optical_flow": "optical_flow",
    "video_autoencoding": "video_autoencoding",
    "flow_sintel": "optical_flow",
}
VARIANTS = ("ours fp32", "ours bf16 autocast", "ours bf16 weights", "ours fp16 autocast", "ours compiled",
            "ours compiled frozen", "ours bf16 compiled frozen", "transformers fp32", "transformers bf16 autocast",
            "jax jit fp32")  # fp16: CUDA only
OPT_IN = ("ours compiled autotuned", "ours bf16 compiled autotuned")
# Inductor's C++ GEMM templates, which autotuning times against the library's (ATen: MKL, oneDNN) kernels.
AUTOTUNE = {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}
SINTEL = (436, 1024)
GEMM = (2048, 1280, 1280)  # M, K, N: the language model's input projections (2048 bytes, 1280 channels)
GEMM_REPEATS = 8
GEMM_FLOPS = 2 * GEMM[0] * GEMM[1] * GEMM[2] * GEMM_REPEATS  # one call of a gemm_calls entry
SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def inputs_for(task: str, model, batch: int, device: torch.device) -> tuple:
    """Random valid inputs at the released sizes (the language model at its full 2048 bytes)."""
    g = torch.Generator().manual_seed(batch)
    if task == "language":
        ids = torch.randint(6, 262, (batch, model.config["max_seq_len"]), generator=g)
        return ids.to(device), torch.ones_like(ids, device=device)
    if task.startswith("imagenet"):  # random 0-255 pixels, normalised as imagenet_transform does
        pixels = torch.rand(batch, 3, *model.image_size, generator=g) * 255
        mean, std = torch.tensor(MEAN_RGB)[:, None, None], torch.tensor(STDDEV_RGB)[:, None, None]
        return (((pixels - mean) / std).to(device),)
    if task == "optical_flow":
        return tuple((torch.rand(batch, 3, *model.train_size, generator=g) * 2 - 1).to(device) for _ in range(2))
    if task == "flow_sintel":
        return tuple((torch.rand(batch, 3, *SINTEL, generator=g) * 2 - 1).to(device) for _ in range(2))
    size = model.image_size  # one decoding chunk of the colab's 128, as its autoencoding loop runs
    images = torch.rand(batch, model.num_frames, 3, size, size, generator=g).to(device)
    audio = (torch.rand(batch, model.num_samples, 1, generator=g) * 2 - 1).to(device)
    image_points, audio_points = chunk_points(model, int(model.config["nchunks"]))
    return images, audio, {"image": image_points.to(device), "audio": audio_points.to(device)}


def _bf16(inputs):
    if isinstance(inputs, dict):
        return {k: _bf16(v) for k, v in inputs.items()}
    if isinstance(inputs, tuple):
        return tuple(_bf16(v) for v in inputs)
    return inputs.to(torch.bfloat16) if inputs.is_floating_point() else inputs


def our_call(task: str, model, inputs: tuple, tile_batch_size: int, module=None):
    """`model(*inputs)`; `module`: the nn.Module `model` compiles, where `model` is not itself one."""
    if task == "flow_sintel":  # estimate_flow's tiling, driving `model` (compiled or not) per tile batch
        train_size = (model if module is None else module).train_size
        return lambda: stitch_tiles(*inputs, model, train_size, 20, tile_batch_size)
    return lambda: model(*inputs)


def _cpu_flash_attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)  # torch's formula for its other SDPA kernels


# torch's FLOP counter has formulas for SDPA's CUDA kernels but not for the CPU flash kernel, which takes
# float32 attention with equal head widths on the CPU (all of flow's and ImageNet's): counted here, or
# flow's forward would be counted at 433 GFLOP instead of ~1,900.
UNCOUNTED = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flop}


def build_variants(task: str, batch: int, wanted: list[str], device: torch.device, args) -> tuple[dict, dict, float]:
    """({name: no-arg callable}, {name: note}, ours' FLOPs per call)."""
    # No parameter requires grad: inference only, and FlopCounterMode's module hooks need it so.
    model = build_preset(PRESETS[task]).to(device).eval().requires_grad_(False)
    inputs = inputs_for(task, model, batch, device)
    calls, notes = {}, {}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    ours = our_call(task, model, inputs, args.tile_batch_size)
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=UNCOUNTED) as counter:
        ours()
    calls["ours fp32"] = ours
    if "ours bf16 autocast" in wanted:
        calls["ours bf16 autocast"] = _under(autocast, ours)
    if "ours fp16 autocast" in wanted and device.type == "cuda":
        calls["ours fp16 autocast"] = _under(torch.autocast("cuda", dtype=torch.float16), ours)
    model_bf16 = copy.deepcopy(model).to(torch.bfloat16) if {"ours bf16 weights", "ours bf16 compiled frozen",
                                                             "ours bf16 compiled autotuned"} & set(wanted) else None
    if "ours bf16 weights" in wanted:
        calls["ours bf16 weights"] = our_call(task, model_bf16, _bf16(inputs), args.tile_batch_size)
    for name, variant_model, variant_inputs, frozen in (
            ("ours compiled", model, inputs, False), ("ours compiled frozen", model, inputs, True),
            ("ours bf16 compiled frozen", model_bf16, _bf16(inputs), True),
            ("ours compiled autotuned", model, inputs, AUTOTUNE),
            ("ours bf16 compiled autotuned", model_bf16, _bf16(inputs), AUTOTUNE)):
        if name in wanted:
            _compile(name, task, variant_model, variant_inputs, frozen, device, args, calls, notes)
    hf_task = "optical_flow" if task == "flow_sintel" else task
    if any(v.startswith("transformers") for v in wanted):
        hf = forward_peers.hf_model(hf_task, model.config, device)
        if hf is not None:
            hf.requires_grad_(False)
        if hf is None:
            notes["transformers"] = "not installed"
        else:
            if task == "flow_sintel":  # the same tiles through the same tiling code, transformers' model per tile batch
                def tile(a, b):
                    return forward_peers.hf_call("optical_flow", hf, (a, b))().permute(0, 3, 1, 2)
                hf_forward = lambda: stitch_tiles(*inputs, tile, model.train_size, 20, args.tile_batch_size)  # noqa: E731
            else:
                hf_forward = forward_peers.hf_call(task, hf, inputs)
            if "transformers fp32" in wanted:
                calls["transformers fp32"] = hf_forward
            if "transformers bf16 autocast" in wanted:
                calls["transformers bf16 autocast"] = _under(torch.autocast(device.type, dtype=torch.bfloat16),
                                                             hf_forward)
    if "jax jit fp32" in wanted and task != "flow_sintel":
        try:
            peer = forward_peers.jax_call(task, model.config, inputs, device, args.tf32 == "on")
        except Exception as exc:  # noqa: BLE001
            peer, notes["jax jit fp32 error"] = None, f"{type(exc).__name__}: {str(exc)[:200]}"
        if peer is None:
            notes["jax jit fp32"] = "not installed (or no GPU backend for a CUDA run)"
        else:
            calls["jax jit fp32"], compile_s = peer
            notes["jax jit fp32"] = f"jit compile + first call {compile_s:.1f} s"
    return {k: calls[k] for k in VARIANTS + OPT_IN if k in calls}, notes, counter.get_total_flops()


def _compile(name: str, task: str, model, inputs: tuple, frozen: bool | dict, device: torch.device, args,
             calls: dict, notes: dict) -> None:
    """Add `name`: `model` under torch.compile, compiled by its first call (timed); `frozen`: Inductor's freezing,
    a dict: freezing and these Inductor options too.

    Freezing folds the weights into the compiled graph as constants (they must not change afterwards),
    which lets Inductor's CPU backend prepack them for oneDNN and fuse bias and pointwise
    work into the matmuls.
    """
    # compile_frozen keeps freezing in force for every call and distinct from the plain compile of the same model
    # (README, "torch.compile and export").
    options = frozen if isinstance(frozen, dict) else None
    compiled = compile_frozen(model, options=options) if frozen else torch.compile(model, dynamic=False)
    call = our_call(task, compiled, inputs, args.tile_batch_size, model)
    start = time.perf_counter()
    try:
        with torch.no_grad():
            call()
        _sync(device)
        notes[name] = f"compile + first call {time.perf_counter() - start:.1f} s"
        calls[name] = call
    except Exception as exc:  # noqa: BLE001
        notes[name] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"


def _under(context, call):
    def run():
        with context:
            return call()
    return run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def gemm_calls(device: torch.device) -> dict:
    m, k, n = GEMM
    calls = {}
    for dtype in (torch.float32, torch.bfloat16, *((torch.float16,) if device.type == "cuda" else ())):
        a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)

        def run(a=a, b=b):
            for _ in range(GEMM_REPEATS):
                out = a @ b
            return out
        calls[f"gemm {str(dtype).removeprefix('torch.')}"] = run
    return calls


def timed(call, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        call()
    _sync(device)
    return time.perf_counter() - start


def peak_memory(call, device: torch.device) -> str:
    """Run the warm-up call and report its peak memory (see the module docstring)."""
    if device.type == "cuda":
        # Every variant's model and inputs stay resident: the call's own need is the peak above what was there.
        torch.cuda.synchronize(device)
        resident = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        timed(call, device)
        return f"{(torch.cuda.max_memory_allocated(device) - resident) / 2**30:.2f} GiB above resident"
    timed(call, device)
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS"


def bench(task: str, batch: int, args, device: torch.device) -> None:
    calls, notes, flops = build_variants(task, batch, args.variants, device, args)
    gemms = gemm_calls(device)
    memory = {}
    for name, call in list(calls.items()):
        try:  # a variant that fails (a peer's bug, an unsupported dtype) is reported, not fatal
            memory[name] = peak_memory(call, device)
        except Exception as exc:  # noqa: BLE001
            notes[name] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
            del calls[name]
    for call in gemms.values():
        timed(call, device)
    times = {name: [] for name in [*calls, *gemms]}
    for _ in range(args.rounds):
        for name, call in [*calls.items(), *gemms.items()]:
            times[name].append(timed(call, device))
    peak = {name.removeprefix("gemm "): GEMM_FLOPS / statistics.median(times[name]) for name in gemms}
    base = times["ours fp32"]
    what = f"{batch} x 1024x436 frame pair(s), estimate_flow" if task == "flow_sintel" else f"batch {batch}"
    print(f"\n### {task} ({PRESETS[task]}), {what}: {flops / 1e9:.1f} GFLOP per call (ours, counted)\n")
    print("| variant | median | ratio to ours fp32 | GFLOP/s | % of GEMM peak | peak memory |")
    print("|---|---:|---:|---:|---:|---|")
    for name in calls:
        median = statistics.median(times[name])
        ratio = statistics.median(t / b for t, b in zip(times[name], base, strict=True))
        reference = "float16" if "fp16" in name else "bfloat16" if "bf16" in name else "float32"
        rate = flops / median
        print(f"| {name} | {_fmt(median)} | {ratio:.2f} | {rate / 1e9:.0f} | {100 * rate / peak[reference]:.0f}% "
              f"({SHORT[reference]}) | {memory[name]} |")
    print("\nGEMM peak in the same rounds: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peak.items()) + ".")
    for pair in (("ours fp32", "transformers fp32"), ("ours bf16 autocast", "transformers bf16 autocast"),
                 ("ours fp32", "jax jit fp32"), ("ours compiled", "ours fp32"), ("ours compiled frozen", "ours fp32"),
                 ("ours bf16 compiled frozen", "transformers bf16 autocast"),
                 ("ours bf16 weights", "transformers bf16 autocast")):
        if all(p in times for p in pair):
            ratio = statistics.median(a / b for a, b in zip(times[pair[0]], times[pair[1]], strict=True))
            print(f"{pair[0]} / {pair[1]}: {ratio:.2f} (median of per-round ratios)")
    for name, note in notes.items():
        print(f"{name}: {note}")
    spread = max(max(t) / min(t) for t in times.values())
    print(f"rounds: {args.rounds}; largest max/min spread of one variant over the rounds: {spread:.2f}x")


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def describe_machine(device: torch.device) -> str:
    parts = [f"torch {torch.__version__}", f"device {device}"]
    if device.type == "cuda":
        parts.append(torch.cuda.get_device_name(device))
        parts.append(f"TF32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}")
    else:
        cpu = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                       if line.startswith("model name"))
        parts += [cpu, f"{torch.get_num_threads()} threads"]
    for peer in ("transformers", "jax"):
        module = forward_peers.optional(peer)
        parts.append(f"{peer} {module.__version__ if module else 'not installed'}")
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=list(PRESETS), default=list(PRESETS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS + OPT_IN, default=list(VARIANTS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tf32", choices=("off", "on"), default="off", help="CUDA: TF32 matmuls and convolutions")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads on CPU")
    parser.add_argument("--tile-batch-size", type=int, default=6, help="flow_sintel: tiles per model call")
    args = parser.parse_args()
    if args.rounds < 1 or min(args.batch_sizes) < 1:
        parser.error("--rounds and --batch-sizes must be >= 1")
    device = torch.device(args.device)
    if device.type == "cuda":
        tf32 = args.tf32 == "on"
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# bench_forward: {describe_machine(device)}; rounds {args.rounds}")
    for task in args.tasks:
        for batch in args.batch_sizes:
            bench(task, batch, args, device)
            torch._dynamo.reset()


if __name__ == "__main__":
    main()
