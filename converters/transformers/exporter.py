"""Our converted .safetensors -> a transformers model directory (config.json, model.safetensors, README.md, and
what transformers' pipelines load beside them: an image classifier's preprocessor_config.json, the language
model's tokenizer_config.json)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

from perceiver_torch.message_text import printable
from perceiver_torch.serialization import load_model, read_metadata, remove_empty_folders, temp_name

from ..rules import strict_merge
from .card import model_card
from .config_map import OWN_KEY
from .label_names import repeated_names
from .preprocessor import PREPROCESSOR_FILE, preprocessor_config
from .tables import BATCHES_TRACKED, export_rules, hf_only, torch_key

log = logging.getLogger(__name__)


class ExportError(ValueError):
    """The output directory cannot be written as asked."""


def _hf_model():
    """The module that builds transformers' classes (imported on use: only export needs transformers)."""
    try:
        from . import hf_model
    except ImportError as exc:
        raise ExportError(f"exporting needs the transformers package ({exc}); pip install -c constraints.txt "
                          "transformers") from None
    return hf_model


def export_state(task: str, config: dict, state: dict[str, torch.Tensor], strict: bool = True,
                 class_names: tuple[str, ...] | None = None):
    """(architecture, PerceiverConfig, transformers state dict) for our model's `state`; the config's
    id2label/label2id name the classes by `class_names` where given (the model's own).

    strict=False allows sizes transformers fixes in code (the state then loads into
    `hf_model.load(..., strict=False)`, not into the plain class).
    """
    hf_model = _hf_model()
    architecture, hf = hf_model.hf_config(task, config, strict, class_names)
    setattr(hf, OWN_KEY, {"task": task, "config": config})
    shapes = {k: tuple(v.shape) for k, v in hf_model.meta_model(task, config, strict).state_dict().items()}
    synthesized = {item.key for item in hf_only(task, config)}
    arrays = strict_merge({k: v.numpy() for k, v in state.items()},
                          {k: v for k, v in shapes.items() if k not in synthesized},
                          export_rules(task, config), context=f"{task} to transformers {architecture}", key=torch_key)
    out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    if BATCHES_TRACKED in synthesized:
        out[BATCHES_TRACKED] = torch.zeros((), dtype=torch.long)
    return architecture, hf, out


def _prepare_dir(out_dir: Path) -> tuple[Path, list[Path]]:
    """(the temp directory to fill, the parent directories made for it: removed again on failure)."""
    if out_dir.is_symlink():  # renaming the finished directory onto it would fail (or replace the link)
        raise ExportError(f"{out_dir} is a symbolic link; give the directory itself ({out_dir.resolve()}).")
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} is a file; the output is a directory (config.json, model.safetensors, "
                          "README.md): give a new (or empty) directory's path.")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ExportError(f"{out_dir} exists and is not an empty directory; refusing to overwrite it.")
    ancestor = next(p for p in out_dir.absolute().parents if p.exists() or p.is_symlink())
    if not ancestor.is_dir():
        raise ExportError(f"cannot create {out_dir}: {ancestor} is not a directory.")
    created = [p for p in out_dir.absolute().parents if not p.exists()]  # deepest first
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_dir.parent / temp_name(out_dir.name)
        tmp.mkdir()
    except OSError as exc:  # no permission, ...
        remove_empty_folders(created)
        raise ExportError(f"cannot create {out_dir}: {exc.strerror or exc} ({exc.filename or out_dir}).") from None
    return tmp, created


def to_transformers(converted_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write `converted_path` (a perceiver-torch file) as a transformers model directory `out_dir`.

    The directory appears complete or not at all. Its config.json is transformers' with a tanh
    GELU plus our own config under "perceiver_torch" (so that importing it back is exact), and
    id2label/label2id naming the classes as the model's `labels` do where they have names; the
    README.md lists what transformers still computes differently. An image classifier also gets a
    preprocessor_config.json (preprocessor.py), so that transformers' image-classification pipeline loads it, and
    the language model transformers' byte tokenizer (tokenizer_config.json), so that its fill-mask pipeline does.
    """
    if not os.fspath(out_dir):  # Path("") would be ".", the working directory
        raise ExportError("the output directory path is empty; give a new (or empty) directory's path.")
    # load_model's checks first (header, schema, names, shapes, dtypes, finite values): the file is input.
    model = load_model(converted_path)
    names = getattr(model, "class_names", None)
    state = model.state_dict()
    meta = read_metadata(converted_path)
    task, config = meta["task"], json.loads(meta["config"])
    repeated = repeated_names(names) if names is not None else []
    if repeated:  # label2id has one entry a name; id2label keeps every class's name
        log.warning("%s: %d class name(s) given to more than one class (%s); label2id maps each to its first "
                    "class", converted_path, len(repeated), ", ".join(printable(name, 40) for name in repeated[:3])
                    + (", ..." if len(repeated) > 3 else ""))
    architecture, hf, tensors = export_state(task, config, state, class_names=names)
    out_dir = Path(out_dir)
    tmp, created = _prepare_dir(out_dir)
    try:
        hf.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "README.md").write_text(model_card(task, architecture, config, meta))
        preprocessor = preprocessor_config(task, config)
        if preprocessor is not None:  # what transformers.pipeline("image-classification", model=DIR) loads
            (tmp / PREPROCESSOR_FILE).write_text(json.dumps(preprocessor, indent=2, sort_keys=True) + "\n")
        if task == "language":  # the release's bytes: 6 special ids, then byte b at b + 6, as our tokenizer
            tokenizer = transformers.PerceiverTokenizer(model_max_length=int(config["max_seq_len"]))
            tokenizer.save_pretrained(str(tmp))
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(tmp, out_dir)
    except OSError as exc:  # a full disk, a directory that appeared meanwhile, ...
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty_folders(created)
        raise ExportError(f"cannot write {out_dir}: {exc.strerror or exc}.") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty_folders(created)
        raise
    return out_dir
