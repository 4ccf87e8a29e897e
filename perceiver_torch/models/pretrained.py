"""`from_pretrained`, `save_pretrained`, `push_to_hub`, `num_parameters`, `device` and `dtype` on every task model,
as transformers' classes have them."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Self, cast

import torch


class PretrainedMixin:
    """Gives a task model class (one with a `task`) transformers' `from_pretrained`, `save_pretrained` and
    `push_to_hub`, spelled as there and built on `create_model`, `load_model`, `save_model` and `pt.push_to_hub`;
    and its `num_parameters()`, `device` and `dtype`."""

    task: str

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype | None = None, **zoo_kwargs) -> Self:
        """This class's model by zoo name or from a user's Hub repo (``"hf-hub:owner/name"``), as `pt.create_model`,
        or from a converted file or a `save_pretrained` directory, as `pt.load_model`.

        A name of another task's model, or a file or repo holding one, is refused before anything is fetched or
        built. Keyword arguments beyond `device` and `dtype` are `create_model`'s: `num_classes`, `endpoint`,
        `cache_dir`, `token` (huggingface_hub's: a str, True, False or None), and `mirror`, `manifest` for a zoo
        name or `revision` for a Hub repo; a file takes none.
        """
        # The zoo client builds models through the registry, which imports these classes: import at call time.
        from ..zoo.pretrained import from_pretrained

        model = from_pretrained(cls.task, name_or_path, device=device, dtype=dtype, **zoo_kwargs)
        return cast(Self, model)  # of this class: from_pretrained refused every other task's model

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write the model as ``model.safetensors`` (`save_model`'s file: weights, task and config) into
        `save_directory`, created if needed; `from_pretrained(save_directory)` gives it back. Returns the file."""
        from ..saving import save_model  # imports the registry, which imports these classes
        from ..zoo.user_hub import FILENAME

        directory = Path(save_directory)
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"save_pretrained: {directory} exists and is not a directory; give a directory "
                                     f"(it will hold {FILENAME}).")
        created = [d for d in (directory, *directory.parents) if not d.exists()]  # deepest first
        try:
            directory.mkdir(parents=True, exist_ok=True)
            return save_model(cast(torch.nn.Module, self), directory / FILENAME)
        except BaseException:  # save_model (or mkdir) wrote nothing: no directory is left behind for it either
            for made in created:
                with contextlib.suppress(OSError):  # no longer empty: someone else's now
                    made.rmdir()
            raise

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """`pt.push_to_hub(self, repo_id, **kwargs)`: upload the model to the Hub repo 'owner/name' in one commit
        (`token`, `endpoint`, `revision`, `private`, `commit_message`); returns the commit id."""
        from ..zoo.push import push_to_hub

        return push_to_hub(cast(torch.nn.Module, self), repo_id, **kwargs)

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """How many parameters the model has (transformers' method): only those that require grad with
        `only_trainable`, without the `nn.Embedding` tables' with `exclude_embeddings` (the byte embeddings)."""
        module = cast(torch.nn.Module, self)
        skipped = {id(m.weight) for m in module.modules() if isinstance(m, torch.nn.Embedding)} \
            if exclude_embeddings else set()
        return sum(p.numel() for p in module.parameters()
                   if id(p) not in skipped and (p.requires_grad or not only_trainable))

    @property
    def device(self) -> torch.device:
        """Where the parameters are (transformers' property), e.g. for `inputs.to(model.device)`."""
        return next(cast(torch.nn.Module, self).parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The parameters' floating-point dtype (transformers' property): float32, or what `.to(dtype)` or
        `dtype=` made it. Float32 islands compute in float32 without float32 parameters (layers/precision.py)."""
        return next(p.dtype for p in cast(torch.nn.Module, self).parameters() if p.is_floating_point())
