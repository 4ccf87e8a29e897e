"""Write the hostile corpus for the converted-file loader and the config schema.

    python scripts/make_hostile_loader_corpus.py

parity_tests/fixtures/hostile/safetensors/: a small valid converted language model
(`valid.safetensors`) and tampered variants of it: broken containers (header length, JSON,
offsets, truncation), tensors of the wrong dtype, shape, name or value, and metadata whose task or
config is wrong, malformed or sized to exhaust memory or time if it were built.
parity_tests/fixtures/hostile/configs/: config.json files with wrong types, missing and unknown
keys, bad values and broken JSON.

Each folder's cases.json gives every file's expected refusal: the exception class and substrings
its message must contain. parity_tests/test_hostile_loader.py runs each case in a capped child
process. The output is deterministic (numpy's seeded generator, sorted JSON).
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import struct
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perceiver_torch.safetensors_io import write_safetensors  # noqa: E402
from perceiver_torch.serialization import FORMAT, build_on_meta  # noqa: E402

ROOT = Path(__file__).resolve().parents[1] / "parity_tests" / "fixtures" / "hostile"
FORMAT_ERROR = "perceiver_torch.safetensors_io.CheckpointFormatError"
CONFIG_ERROR = "perceiver_torch.serialization.CheckpointConfigError"
SCHEMA_ERROR = "perceiver_torch.config_schema.ConfigError"

# A language model small enough that the corpus stays a few hundred KB.
LANGUAGE = {
    "d_model": 8, "max_seq_len": 8, "vocab_size": 262,
    "encoder": {"num_self_attends_per_block": 1, "num_blocks": 1, "z_index_dim": 4, "num_z_channels": 8,
                "num_self_attend_heads": 2, "num_cross_attend_heads": 2, "qk_channels": 8, "v_channels": 8,
                "use_query_residual": True, "cross_attend_widening_factor": 1, "self_attend_widening_factor": 1},
    "decoder": {"output_num_channels": 8, "position_encoding_type": "trainable", "output_index_dims": 8,
                "num_z_channels": 8, "qk_channels": 8, "v_channels": 8, "num_heads": 2, "final_project": False,
                "use_query_residual": False, "trainable_position_encoding_kwargs": {"num_channels": 8}},
}
VICTIM = "encoder.cross_attend.attention.query.weight"  # the tensor the tensor-level cases tamper with


def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = {k: tuple(v.shape) for k, v in build_on_meta("language", LANGUAGE).state_dict().items()}
    return {k: (0.1 * rng.standard_normal(shape)).astype(np.float32) for k, shape in sorted(shapes.items())}


def metadata(task: str = "language", config=None, config_text: str | None = None) -> dict[str, str]:
    text = config_text if config_text is not None else json.dumps(config or LANGUAGE, sort_keys=True)
    return {"format": FORMAT, "task": task, "config": text}


def container(tensors: dict, meta: dict | None) -> bytes:
    buffer = io.BytesIO()
    write_safetensors(buffer, tensors, meta)
    return buffer.getvalue()


def split(data: bytes) -> tuple[dict, bytes]:
    """(parsed header, data section) of a file written by `container`."""
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), data[8 + length:]


def join(header: dict | bytes, body: bytes, length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw) if length is None else length) + raw + body


def config_with(path: str, value) -> dict:
    config = copy.deepcopy(LANGUAGE)
    *parents, key = path.split(".")
    section = config
    for p in parents:
        section = section[p]
    section[key] = value
    return config


def safetensors_cases() -> dict[str, tuple[bytes, str, list[str]]]:
    w = weights()
    valid = container(w, metadata())
    header, body = split(valid)
    cases: dict[str, tuple[bytes, str, list[str]]] = {}

    def tampered_header(mutate) -> bytes:
        h = copy.deepcopy(header)
        mutate(h)
        return join(h, body)

    def with_tensor(name: str, value) -> bytes:
        t = dict(w)
        if value is None:
            del t[name]
        else:
            t[name] = value
        return container(t, metadata())

    def with_meta(meta: dict) -> bytes:
        return container(w, meta)

    # Container.
    cases["empty"] = (b"", FORMAT_ERROR, ["too short"])
    cases["header_length_huge"] = (struct.pack("<Q", 1 << 62) + valid[8:], FORMAT_ERROR, ["header length"])
    cases["header_length_past_end"] = (struct.pack("<Q", len(valid)) + valid[8:], FORMAT_ERROR, ["header length"])
    raw_len = struct.unpack("<Q", valid[:8])[0]
    cases["header_not_json"] = (valid[:8] + b"\xff" * raw_len + body, FORMAT_ERROR, ["not valid JSON"])
    cases["header_not_object"] = (join(b"[1, 2, 3]", body), FORMAT_ERROR, ["must be a JSON object"])
    cases["header_deeply_nested"] = (join(b"[" * 10_000 + b"]" * 10_000, body), FORMAT_ERROR,
                                     ["not valid JSON"])
    dup = json.dumps(header)[:-1] + ', "' + VICTIM + '": ' + json.dumps(header[VICTIM]) + "}"
    cases["header_duplicate_key"] = (join(dup.encode(), body), FORMAT_ERROR, ["duplicate key"])
    cases["header_nan_literal"] = (join(json.dumps(header)[:-1].encode() + b', "x": NaN}', body), FORMAT_ERROR,
                                   ["not valid JSON"])

    def overlap(h):
        begin, end = h[VICTIM]["data_offsets"]
        h[VICTIM]["data_offsets"] = [begin - 4, end - 4] if begin else [begin + 4, end + 4]
    cases["offsets_overlapping"] = (tampered_header(overlap), FORMAT_ERROR, [VICTIM, "data_offsets"])

    def out_of_range(h):
        last = max(h[k]["data_offsets"][1] for k in h if k != "__metadata__")
        size = h[VICTIM]["data_offsets"][1] - h[VICTIM]["data_offsets"][0]
        h[VICTIM]["data_offsets"] = [last + (1 << 40), last + (1 << 40) + size]
    cases["offsets_out_of_range"] = (tampered_header(out_of_range), FORMAT_ERROR, [VICTIM, "data_offsets"])

    def size_mismatch(h):
        h[VICTIM]["shape"] = [h[VICTIM]["shape"][0], h[VICTIM]["shape"][1] * 1000]
    cases["offsets_disagree_with_shape"] = (tampered_header(size_mismatch), FORMAT_ERROR, [VICTIM, "needs"])

    def negative_dim(h):
        h[VICTIM]["shape"] = [-1, 64]
    cases["shape_negative"] = (tampered_header(negative_dim), FORMAT_ERROR, [VICTIM, "non-negative"])

    def unknown_dtype(h):
        h[VICTIM]["dtype"] = "F8_E4M3"
    cases["dtype_unknown"] = (tampered_header(unknown_dtype), FORMAT_ERROR, [VICTIM, "unknown dtype"])

    def extra_field(h):
        h[VICTIM]["mmap_at"] = 0
    cases["tensor_entry_extra_field"] = (tampered_header(extra_field), FORMAT_ERROR, [VICTIM, "exactly"])

    def bad_metadata(h):
        h["__metadata__"]["format"] = 1
    cases["metadata_not_strings"] = (tampered_header(bad_metadata), FORMAT_ERROR, ["__metadata__"])
    cases["data_truncated"] = (valid[:-100], FORMAT_ERROR, ["truncated"])
    cases["data_trailing_bytes"] = (valid + b"\0" * 64, FORMAT_ERROR, ["trailing bytes"])

    # Tensors against the model.
    victim = w[VICTIM]
    cases["tensor_float16"] = (with_tensor(VICTIM, victim.astype(np.float16)), FORMAT_ERROR,
                               [VICTIM, "dtype F16", "F32"])
    cases["tensor_int32"] = (with_tensor(VICTIM, (victim * 100).astype(np.int32)), FORMAT_ERROR,
                             [VICTIM, "dtype I32"])
    cases["tensor_float64"] = (with_tensor(VICTIM, victim.astype(np.float64)), FORMAT_ERROR, [VICTIM, "dtype F64"])
    cases["tensor_wrong_shape"] = (with_tensor(VICTIM, np.ascontiguousarray(victim.T[:, :-1])), FORMAT_ERROR,
                                   [VICTIM, "shape"])
    cases["tensor_missing"] = (with_tensor(VICTIM, None), FORMAT_ERROR, ["missing tensor " + VICTIM])
    cases["tensor_extra"] = (with_tensor("encoder.self_attends.7.norm.weight", victim[0]), FORMAT_ERROR,
                             ["unexpected tensor encoder.self_attends.7.norm.weight"])
    nan = victim.copy()
    nan[1, 2] = np.nan
    cases["tensor_nan"] = (with_tensor(VICTIM, nan), FORMAT_ERROR, ["non-finite", VICTIM])
    inf = victim.copy()
    inf[0, 0] = -np.inf
    cases["tensor_inf"] = (with_tensor(VICTIM, inf), FORMAT_ERROR, ["non-finite", VICTIM])

    # Metadata: format, task, config.
    cases["metadata_absent"] = (container(w, None), FORMAT_ERROR, ["no perceiver-torch metadata"])
    cases["metadata_foreign_format"] = (with_meta({**metadata(), "format": "pt"}), FORMAT_ERROR,
                                        ["no perceiver-torch metadata"])
    cases["config_not_json"] = (with_meta(metadata(config_text='{"d_model": 8,')), CONFIG_ERROR, ["not valid JSON"])
    cases["config_nan_literal"] = (with_meta(metadata(config_text='{"d_model": NaN}')), CONFIG_ERROR,
                                   ["not valid JSON"])
    cases["config_not_object"] = (with_meta(metadata(config_text="[8]")), CONFIG_ERROR, ["expected a JSON object"])
    # json.loads keeps the last of two equal keys: one file, two readings.
    cases["config_duplicate_key"] = (with_meta(metadata(config_text=json.dumps(LANGUAGE)[:-1] + ', "d_model": 8}')),
                                     CONFIG_ERROR, ["not valid JSON", "duplicate key 'd_model'"])
    cases["task_unknown"] = (with_meta(metadata(task="chess")), CONFIG_ERROR, ["task", "chess"])
    cases["task_other"] = (with_meta(metadata(task="imagenet")), CONFIG_ERROR,
                           ["d_model: unknown key", "image_size: missing"])
    for name, path, value in (
        ("config_num_latents_1e7", "encoder.z_index_dim", 10**7),
        ("config_d_model_1e6", "d_model", 10**6),
        ("config_self_attends_1e5", "encoder.num_self_attends_per_block", 10**5),
        ("config_num_blocks_1e9", "encoder.num_blocks", 10**9),
        ("config_heads_1e6", "decoder.num_heads", 10**6),
        ("config_max_seq_len_1e9", "max_seq_len", 10**9),
    ):
        cases[name] = (with_meta(metadata(config=config_with(path, value))), CONFIG_ERROR, [path, str(value)])
    # Every size within its cap, the whole far beyond any model: refused by the parameter count.
    huge = config_with("vocab_size", 1 << 18)
    huge["d_model"] = huge["decoder"]["output_num_channels"] = 8192
    huge["decoder"]["trainable_position_encoding_kwargs"]["num_channels"] = 8192
    cases["config_parameter_count"] = (with_meta(metadata(config=huge)), CONFIG_ERROR, ["parameters"])
    cases["config_missing_num_heads"] = (
        with_meta(metadata(config={**LANGUAGE, "decoder": {k: v for k, v in LANGUAGE["decoder"].items()
                                                           if k != "num_heads"}})),
        CONFIG_ERROR, ["decoder.num_heads: missing"])
    cases["config_d_model_bool"] = (with_meta(metadata(config=config_with("d_model", True))), CONFIG_ERROR,
                                    ["d_model", "bool"])
    cases["config_encoder_list"] = (with_meta(metadata(config=config_with("encoder", []))), CONFIG_ERROR,
                                    ["encoder", "list", "expected a mapping"])
    # The constructors refuse what no single key shows: 8 channels over 3 heads.
    cases["config_heads_do_not_divide"] = (with_meta(metadata(config=config_with("encoder.num_self_attend_heads", 3))),
                                           CONFIG_ERROR, ["divisible"])
    cases["valid"] = (valid, "", [])
    return cases


def config_cases() -> dict[str, tuple[str, str, list[str]]]:
    """name -> (task, config.json text, substrings of the ConfigError)."""
    golden = Path(__file__).resolve().parents[1] / "parity_tests" / "fixtures" / "golden"

    def load(family: str) -> dict:
        return json.loads((golden / family / "config.json").read_text())

    def edit(family: str, path: str, value=None, delete: bool = False) -> str:
        config = load(family)
        *parents, key = path.split(".")
        section = config
        for p in parents:
            section = section[p]
        if delete:
            del section[key]
        else:
            section[key] = value
        return json.dumps(config, indent=1)

    lang = ("language",)
    cases = {
        "missing_decoder_num_heads": (*lang, edit("language", "decoder.num_heads", delete=True),
                                      ["decoder.num_heads: missing"]),
        "missing_encoder_num_blocks": (*lang, edit("language", "encoder.num_blocks", delete=True),
                                       ["encoder.num_blocks: missing"]),
        "missing_decoder": (*lang, edit("language", "decoder", delete=True), ["decoder: missing"]),
        "unknown_top_level_key": (*lang, edit("language", "dmodel", 768), ["dmodel: unknown key", "d_model"]),
        "unknown_encoder_key": (*lang, edit("language", "encoder.num_heads", 8),
                                ["encoder.num_heads: unknown key", "num_self_attend_heads"]),
        "encoder_is_list": (*lang, edit("language", "encoder", [1, 2]), ["encoder: found [1, 2] (list)"]),
        "d_model_str": (*lang, edit("language", "d_model", "32"), ["d_model: found '32' (str)"]),
        "d_model_bool": (*lang, edit("language", "d_model", True), ["d_model: found True (bool)"]),
        "d_model_float": (*lang, edit("language", "d_model", 32.0), ["d_model: found 32.0 (float)"]),
        "negative_latents": (*lang, edit("language", "encoder.z_index_dim", -16), ["encoder.z_index_dim", "-16"]),
        "zero_heads": (*lang, edit("language", "decoder.num_heads", 0), ["decoder.num_heads", "found 0"]),
        "use_query_residual_int": (*lang, edit("language", "decoder.use_query_residual", 1),
                                   ["decoder.use_query_residual", "true or false"]),
        "decoder_width_mismatch": (*lang, edit("language", "decoder.num_z_channels", 40),
                                   ["decoder.num_z_channels", "encoder's num_z_channels"]),
        "trainable_without_kwargs": (*lang, edit("language", "decoder.trainable_position_encoding_kwargs",
                                                  delete=True), ["decoder.trainable_position_encoding_kwargs"]),
        "num_blocks_huge": (*lang, edit("language", "encoder.num_blocks", 10**9), ["encoder.num_blocks", "<= 64"]),
        "imagenet_prep_type_unknown": ("imagenet", edit("imagenet_conv", "input_preprocessor.prep_type", "resnet"),
                                       ["input_preprocessor.prep_type", "'conv1x1'"]),
        "imagenet_max_resolution_wrong": ("imagenet", edit(
            "imagenet_conv", "input_preprocessor.fourier_position_encoding_kwargs.max_resolution", ["8", 8]),
            ["fourier_position_encoding_kwargs.max_resolution"]),
        "imagenet_missing_max_resolution": ("imagenet", edit(
            "imagenet_fourier", "input_preprocessor.fourier_position_encoding_kwargs.max_resolution", delete=True),
            ["fourier_position_encoding_kwargs.max_resolution: missing"]),
        "imagenet_image_size_scalar": ("imagenet", edit("imagenet_learned", "image_size", 16), ["image_size"]),
        "flow_rescale_zero": ("optical_flow", edit("optical_flow", "rescale_factor", 0), ["rescale_factor"]),
        "flow_dropout_above_one": ("optical_flow", edit("optical_flow", "encoder.dropout_prob", 1.5),
                                   ["encoder.dropout_prob"]),
        "video_image_size_bool": ("video_autoencoding", edit("video_autoencoding", "image_size", False),
                                  ["image_size: found False (bool)"]),
        "video_unknown_key": ("video_autoencoding", edit("video_autoencoding", "n_chunks", 4),
                              ["n_chunks: unknown key", "nchunks"]),
        "several_problems": (*lang, json.dumps({**load("language"), "d_model": "x", "vocab_size": -1, "extra": 1}),
                             ["3 problem(s)", "d_model", "vocab_size", "extra: unknown key"]),
        "not_json": (*lang, '{"d_model": 32,', ["not valid JSON"]),
        "nan_literal": (*lang, edit("language", "d_model", 1).replace('"d_model": 1', '"d_model": NaN'),
                        ["not valid JSON"]),
        "top_level_list": (*lang, "[1, 2, 3]", ["expected a JSON object"]),
        "duplicate_key": (*lang, edit("language", "d_model", 32)[:-2] + ',\n "d_model": 8\n}',
                          ["not valid JSON", "duplicate key 'd_model'"]),
        "not_utf8": (*lang, "\udcff", ["not valid JSON"]),
    }
    return cases


def main(argv: list[str] | None = None) -> None:
    # No options: parsing still answers --help (and refuses stray arguments) instead of rewriting the fixtures.
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    st_dir, cfg_dir = ROOT / "safetensors", ROOT / "configs"
    for folder in (st_dir, cfg_dir):
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
    manifest = {}
    for name, (data, error, contains) in safetensors_cases().items():
        (st_dir / f"{name}.safetensors").write_bytes(data)
        manifest[f"{name}.safetensors"] = {"error": error, "contains": contains}
    (st_dir / "cases.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    manifest = {}
    for name, (task, text, contains) in config_cases().items():
        (cfg_dir / f"{name}.json").write_bytes(text.encode("utf-8", errors="surrogateescape"))
        manifest[f"{name}.json"] = {"task": task, "error": SCHEMA_ERROR, "contains": contains}
    (cfg_dir / "cases.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(list(st_dir.iterdir())) - 1} safetensors and {len(list(cfg_dir.iterdir())) - 1} config cases "
          f"under {ROOT}")


if __name__ == "__main__":
    main()
