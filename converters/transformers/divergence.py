"""Measure how far transformers' Perceiver is from ours (= DeepMind's release) on the same weights.

    python -m converters.transformers.divergence (--golden FAMILY_DIR... | --converted FILE | --preset NAME...)
        [--seed N] [--batch B] [--json OUT.json]

Our model and transformers' (its own classes and forward code, loaded with the same weights by
the export table, sized like the model when transformers' classes fix other sizes) run on the
same inputs. Each divergence in catalog.py that can be switched is measured alone (every other
one switched off) and all together; "none" is transformers with every switch off, which should
agree with ours to float rounding. Reported per row: max abs error, max rel error (max abs
error / max |ours|) and task-level agreement. Printed as a table; --json writes the rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from perceiver_torch.cli_exit import print_out
from perceiver_torch.layers.flow import patches_for_flow
from perceiver_torch.registry import build_model, preset, preset_names
from perceiver_torch.serialization import CheckpointFormatError, atomic_write, load_model, read_metadata

from ..checkpoint_reader import CheckpointReadError, load_haiku_checkpoint
from ..cli_support import unwritable_output
from ..convert import convert_tree, load_config
from ..rules import ConversionError
from . import hf_model
from .config_map import ConfigMismatchError
from .exporter import export_state

# Byte ids of PerceiverTokenizer's special tokens (tokenization_perceiver.py: [PAD]=0 ... [CLS]=4, [SEP]=5).
CLS, SEP = 4, 5
# Which divergences each task can switch; the others in catalog.py are not switchable here.
SWITCHES = {
    "language": ("gelu", "tokenizer"),
    "imagenet": ("gelu", "conv_kernel", "conv_padding", "query_residual"),
    "optical_flow": ("gelu", "flow_scale"),
    "video_autoencoding": ("gelu", "video_positions"),
}


@dataclass
class Case:
    name: str
    task: str
    config: dict
    state: dict[str, torch.Tensor]
    inputs: dict
    upstream: dict[str, np.ndarray] = field(default_factory=dict)


def switches(task: str, config: dict) -> tuple[str, ...]:
    """The switches that change anything for this model."""
    keep = []
    for name in SWITCHES[task]:
        prep = config.get("input_preprocessor", {}).get("prep_type", "conv") if task == "imagenet" else None
        if name in ("conv_kernel", "conv_padding") and prep != "conv":
            continue
        if name == "query_residual" and config.get("decoder", {}).get("use_query_residual", False):
            continue  # transformers' classifier adds the residual; only a model without one differs
        if name == "video_positions" and config.get("image_position_resolution", config["image_size"]) == \
                config["image_size"]:
            continue
        keep.append(name)
    return tuple(keep)


# -- inputs ----------------------------------------------------------------------------------------

def golden_inputs(task: str, io: dict[str, np.ndarray]) -> dict:
    t = {k.removeprefix("input/"): torch.from_numpy(v) for k, v in io.items() if k.startswith("input/")}
    if task == "language":
        return {"ids": t["inputs"].long(), "mask": t["input_mask"].long()}
    if task == "imagenet":
        return {"images": t["images"].permute(0, 3, 1, 2).contiguous()}
    if task == "optical_flow":
        frames = t["images"].permute(0, 1, 4, 2, 3)
        return {"image1": frames[:, 0].contiguous(), "image2": frames[:, 1].contiguous()}
    return {"images": t["images"].permute(0, 1, 4, 2, 3).contiguous(), "audio": t["audio"],
            "subsample": {"image": t["subsample_image"].long(), "audio": t["subsample_audio"].long()}}


def random_inputs(task: str, config: dict, batch: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    if task == "language":
        length = config["max_seq_len"]
        ids = torch.randint(6, 262, (batch, length), generator=g)
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[0, (3 * length) // 4:] = 0  # the first example padded, as in the golden fixture
        return {"ids": ids * mask, "mask": mask}
    if task == "imagenet":
        height, width = config["image_size"]
        return {"images": torch.randn(batch, 3, height, width, generator=g)}
    if task == "optical_flow":
        height, width = config["train_size"]
        return {f"image{i}": torch.rand(batch, 3, height, width, generator=g) * 2 - 1 for i in (1, 2)}
    frames, size = config["num_frames"], config["image_size"]
    samples = frames * config["audio_samples_per_frame"]
    points, patches = frames * size * size, samples // config["samples_per_patch"]
    # Decode chunk 1 of the config's nchunks, as the golden fixture does (whole clip if it cannot be split).
    chunks = config.get("nchunks", 1)
    if points % chunks or patches % chunks:
        chunks = 1
    first = 1 if chunks > 1 else 0
    return {"images": torch.rand(batch, frames, 3, size, size, generator=g),
            "audio": torch.rand(batch, samples, 1, generator=g) * 2 - 1,
            "subsample": {"image": torch.arange(first * points // chunks, (first + 1) * points // chunks),
                          "audio": torch.arange(first * patches // chunks, (first + 1) * patches // chunks)}}


# -- running both ----------------------------------------------------------------------------------

@torch.no_grad()
def run_ours(task: str, model, inputs: dict) -> dict[str, torch.Tensor]:
    if task == "language":
        return {"logits": model(inputs["ids"], inputs["mask"])}
    if task == "imagenet":
        return {"logits": model(inputs["images"])}
    if task == "optical_flow":
        return {"flow": model(inputs["image1"], inputs["image2"]).permute(0, 2, 3, 1)}
    return dict(model(inputs["images"], inputs["audio"], inputs["subsample"]))


def _hf_language_inputs(inputs: dict, tokenizer: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(ids, mask, offset): with transformers' tokenizer, [CLS] + bytes + [SEP] (truncated to fit)."""
    if not tokenizer:
        return inputs["ids"], inputs["mask"], 0
    ids, mask = torch.zeros_like(inputs["ids"]), torch.zeros_like(inputs["mask"])
    length = ids.shape[1]
    for b in range(ids.shape[0]):
        n = min(int(inputs["mask"][b].sum()), length - 2)
        ids[b, :n + 2] = torch.cat([torch.tensor([CLS]), inputs["ids"][b, :n], torch.tensor([SEP])])
        mask[b, :n + 2] = 1
    return ids, mask, 1


@torch.no_grad()
def run_hf(task: str, model, inputs: dict, on: set[str]) -> dict[str, torch.Tensor]:
    if task == "language":
        ids, mask, offset = _hf_language_inputs(inputs, "tokenizer" in on)
        logits = model(inputs=ids, attention_mask=mask).logits
        length = inputs["ids"].shape[1]
        shifted = torch.full((ids.shape[0], length, logits.shape[-1]), float("nan"))
        shifted[:, :length - offset] = logits[:, offset:length]  # aligned with our positions
        return {"logits": shifted}
    if task == "imagenet":
        return {"logits": model(inputs=inputs["images"]).logits}
    if task == "optical_flow":
        frames = torch.stack([inputs["image1"], inputs["image2"]], dim=1)
        patches = patches_for_flow(frames).permute(0, 1, 4, 2, 3)  # transformers takes [B, 2, 27, H, W]
        return {"flow": model(inputs=patches).logits}
    batch, classes = inputs["images"].shape[0], model.config.num_labels
    out = model(inputs={"image": inputs["images"], "audio": inputs["audio"], "label": torch.zeros(batch, classes)},
                subsampled_output_points={**inputs["subsample"], "label": None}).logits
    return {k: out[k] for k in ("image", "audio", "label")}


# -- metrics ---------------------------------------------------------------------------------------

def _errors(a: torch.Tensor, b: torch.Tensor) -> dict:
    diff = (a - b).abs()
    scale = float(b.abs().max()) or 1.0
    return {"max_abs": float(diff.max()), "max_rel": float(diff.max()) / scale}


def _topk(a: torch.Tensor, b: torch.Tensor) -> dict:
    k = min(5, a.shape[-1])
    overlap = [len(set(x) & set(y)) / k for x, y in zip(a.topk(k).indices.tolist(), b.topk(k).indices.tolist(),
                                                       strict=True)]
    return {"top1_agree": float((a.argmax(-1) == b.argmax(-1)).float().mean()), f"top{k}_overlap":
            float(np.mean(overlap))}


def compare(task: str, hf: dict, ours: dict, inputs: dict) -> dict:
    if task == "language":
        valid = inputs["mask"].bool() & ~torch.isnan(hf["logits"][..., 0])
        padded = ~inputs["mask"].bool() & ~torch.isnan(hf["logits"][..., 0])
        out = {"logits (real bytes)": {**_errors(hf["logits"][valid], ours["logits"][valid]),
                                       "greedy_agree": float((hf["logits"][valid].argmax(-1) ==
                                                              ours["logits"][valid].argmax(-1)).float().mean())}}
        if padded.any():
            # transformers drops the decoder's query mask (query_mask in catalog.py): only here.
            out["logits (padding: query_mask)"] = {**_errors(hf["logits"][padded], ours["logits"][padded]),
                                       "greedy_agree": float((hf["logits"][padded].argmax(-1) ==
                                                              ours["logits"][padded].argmax(-1)).float().mean())}
        return out
    if task == "imagenet":
        return {"logits": {**_errors(hf["logits"], ours["logits"]), **_topk(hf["logits"], ours["logits"])}}
    if task == "optical_flow":
        epe = float((hf["flow"] - ours["flow"]).norm(dim=-1).mean())
        return {"flow": {**_errors(hf["flow"], ours["flow"]), "epe_px": epe}}
    return {"image": {**_errors(hf["image"], ours["image"]),
                      "mse": float(((hf["image"] - ours["image"]) ** 2).mean())},
            "audio": {**_errors(hf["audio"], ours["audio"]),
                      "mse": float(((hf["audio"] - ours["audio"]) ** 2).mean())},
            "label": {**_errors(hf["label"], ours["label"]), **_topk(hf["label"], ours["label"])}}


def output_side(task: str, hf: dict, on: set[str]) -> dict:
    """Divergences that act on transformers' outputs only (no rerun needed)."""
    if task == "optical_flow" and "flow_scale" not in on:
        return {"flow": hf["flow"] * 20.0}  # upstream's FLOW_SCALE_FACTOR
    return hf


OUTPUT_SIDE = {"flow_scale"}


def report(case: Case) -> list[dict]:
    """One row per measured setting: 'none', each switch alone, and 'all'."""
    ours_model = build_model(case.task, case.config)
    ours_model.load_state_dict(case.state, strict=True)
    ours = run_ours(case.task, ours_model.eval(), case.inputs)
    strict = _representable(case)
    _, _, hf_state = export_state(case.task, case.config, case.state, strict=strict)
    names = switches(case.task, case.config)
    settings = [("none", set())] + [(n, {n}) for n in names] + ([("all", set(names))] if len(names) > 1 else [])
    rows, runs = [], {}
    for label, on in settings:
        key = frozenset(on - OUTPUT_SIDE)
        if key not in runs:  # one run of transformers' model per model- and input-side setting
            model = hf_model.load(case.task, case.config, hf_state, strict=strict)
            hf_model.switch_off(model, case.task, case.config, set(SWITCHES[case.task]) - on)
            runs[key] = run_hf(case.task, model, case.inputs, on)
            del model
        hf = output_side(case.task, runs[key], on)
        row = {"case": case.name, "task": case.task, "setting": label, "on": sorted(on),
               "outputs": compare(case.task, hf, ours, case.inputs)}
        if case.upstream and label == "none":
            row["ours_vs_upstream"] = {k: _errors(ours[k], torch.from_numpy(v)) for k, v in case.upstream.items()
                                       if k in ours}
        rows.append(row)
    return rows


def _representable(case: Case) -> bool:
    try:
        hf_model.to_hf(case.task, case.config)
    except ConfigMismatchError:
        return False
    return True


# -- cases -----------------------------------------------------------------------------------------

GOLDEN_TASKS = {"language": "language", "imagenet_conv": "imagenet", "imagenet_fourier": "imagenet",
                "imagenet_learned": "imagenet", "optical_flow": "optical_flow",
                "video_autoencoding": "video_autoencoding"}


def golden_case(family_dir: Path) -> Case:
    family_dir = Path(family_dir)
    task = GOLDEN_TASKS.get(family_dir.name)
    if task is None:
        raise ValueError(f"{family_dir} is not a golden fixture folder ({sorted(GOLDEN_TASKS)}).")
    config = load_config(family_dir / "config.json")
    arrays = convert_tree(task, load_haiku_checkpoint(family_dir / "checkpoint.pickle"), config)
    with np.load(family_dir / "io.npz") as data:
        io = {k: data[k] for k in data.files}
    upstream = {k.removeprefix("output/"): v for k, v in io.items() if k.startswith("output/")}
    return Case(f"golden/{family_dir.name}", task, config,
                {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()},
                golden_inputs(task, io), upstream)


def converted_case(path: Path, batch: int, seed: int) -> Case:
    state = load_model(path).state_dict()  # the file is checked as any converted file is
    meta = read_metadata(path)
    task, config = meta["task"], json.loads(meta["config"])
    return Case(str(path), task, config, state, random_inputs(task, config, batch, seed))


def preset_case(name: str, batch: int, seed: int) -> Case:
    """Released-size model with random weights: our initialisation (seeded), constant tensors perturbed.

    Zero- or one-initialised tensors (biases, layer norms, the flow head, which upstream zero-initialises)
    get N(0, 0.02) noise, as the golden fixtures' parameters were perturbed, so every layer matters.
    """
    entry = preset(name)
    torch.manual_seed(seed)
    model = build_model(entry["task"], entry["config"])
    with torch.no_grad():
        for tensor in model.parameters():
            if tensor.numel() > 1 and bool((tensor == tensor.flatten()[0]).all()):
                tensor.add_(torch.randn_like(tensor) * 0.02)
    return Case(f"preset/{name} (random weights)", entry["task"], entry["config"], model.state_dict(),
                random_inputs(entry["task"], entry["config"], batch, seed))


def table(rows: list[dict]) -> str:
    lines = ["| case | setting | output | max abs | max rel | task-level |", "| --- | --- | --- | ---: | ---: | --- |"]
    for row in rows:
        for output, m in row["outputs"].items():
            extra = ", ".join(f"{k} {v:.4g}" for k, v in m.items() if k not in ("max_abs", "max_rel"))
            lines.append(f"| {row['case']} | {row['setting']} | {output} | {m['max_abs']:.3g} | {m['max_rel']:.3g} "
                         f"| {extra} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converters.transformers.divergence", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    # A repeated --golden or --preset adds to the earlier ones (argparse's default would keep only the last).
    source.add_argument("--golden", nargs="+", action="extend", type=Path, metavar="FAMILY_DIR",
                        help="golden fixture folder(s), each measured")
    source.add_argument("--converted", type=Path, help="a perceiver-torch .safetensors (random inputs)")
    source.add_argument("--preset", nargs="+", action="extend", choices=preset_names(), metavar="NAME",
                        help=f"released configuration(s), random weights: {', '.join(preset_names())}")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error("--batch must be at least 1.")
    if not 0 <= args.seed < 2**32:  # numpy's seeds; perceiver-parity's --seed has the same range
        parser.error(f"--seed must be an integer from 0 to {2**32 - 1}; got {args.seed}.")
    if args.json is not None and (problem := unwritable_output(args.json)):
        parser.error(f"--json {problem}")
    rows = []
    try:
        if args.golden:
            cases = (golden_case(d) for d in args.golden)
        elif args.converted:
            cases = iter([converted_case(args.converted, args.batch, args.seed)])
        else:
            cases = (preset_case(n, args.batch, args.seed) for n in args.preset)
        for case in cases:
            rows += report(case)
    except (ConversionError, CheckpointReadError, CheckpointFormatError, ConfigMismatchError, KeyError, ValueError,
            FileNotFoundError) as exc:
        print(f"divergence: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # nothing is written before every case is measured
        print("divergence: interrupted; nothing was written.", file=sys.stderr)
        return 130
    status = 0
    # The file first: a reader of stdout that stops early (| head) does not keep the rows from being written.
    if args.json:
        text = json.dumps(rows, indent=1)
        try:
            atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
        except OSError as exc:
            print(f"divergence: error: cannot write {args.json}: {exc.strerror or exc}", file=sys.stderr)
            status = 1
    try:
        return print_out(table(rows) + (f"\nwrote {args.json}" if args.json and not status else "")) or status
    except OSError as exc:  # a full disk, /dev/full
        print(f"divergence: error: cannot write to stdout: {exc.strerror or exc}", file=sys.stderr)
        return 1

if __name__ == "__main__":
    sys.exit(main())
