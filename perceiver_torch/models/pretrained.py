"""`from_pretrained`, `save_pretrained`, `push_to_hub`, `num_parameters`, `device` and `dtype` on every task model,
as transformers' classes have them."""

from __future__ import annotations

import contextlib
import inspect
import os
from pathlib import Path
from typing import Self, cast

import torch


def _repo_to_push(directory: Path, push_to_hub, push_kwargs: dict) -> str | None:
    """The repo `save_pretrained(directory, push_to_hub=..., **push_kwargs)` pushes to (popping `repo_id`), or None;
    its arguments refused before anything is written."""
    from ..zoo.push import checked_arguments, write_token  # imports the registry, which imports these classes
    from ..zoo.push import push_to_hub as push

    takes = set(inspect.signature(push).parameters) - {"model", "repo_id"}
    unknown = sorted(set(push_kwargs) - takes - {"repo_id"})
    if unknown:  # a misspelt keyword is named as such, whatever push_to_hub is
        raise TypeError(f"save_pretrained: unexpected keyword argument(s) {', '.join(map(repr, unknown))} (it "
                        f"takes push_to_hub and, with push_to_hub=True, repo_id, {', '.join(sorted(takes))}).")
    if type(push_to_hub) is not bool:  # bool("no") is True: a string would upload
        raise TypeError(f"save_pretrained: push_to_hub must be True or False; got {type(push_to_hub).__name__} "
                        f"{push_to_hub!r:.40}.")
    if not push_to_hub:
        if push_kwargs:
            raise TypeError(f"save_pretrained: {', '.join(sorted(push_kwargs))} applies to the upload; pass "
                            "push_to_hub=True to push the saved model.")
        return None
    # transformers' default: the directory's name (a repo of the token's owner).
    given = push_kwargs.pop("repo_id", None)
    repo_id = directory.resolve().name if given is None else given
    try:
        _, token = checked_arguments(repo_id, **push_kwargs)
    except ValueError as exc:
        if given is None and str(exc).startswith("push_to_hub: repo_id"):
            raise ValueError(f"save_pretrained: the directory's name {repo_id!r:.60} is no Hub repo name; pass "
                             "repo_id='owner/name'.") from None
        raise
    write_token(token, repo_id)  # a token that cannot upload (False, or none on the machine): before the write
    return repo_id


class PretrainedMixin:
    """Gives a task model class (one with a `task`) transformers' `from_pretrained`, `save_pretrained` and
    `push_to_hub`, spelled as there and built on `create_model`, `load_model`, `save_model` and `pt.push_to_hub`;
    and its `num_parameters()`, `device` and `dtype`."""

    task: str

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, device: str | torch.device | None = None,
                        dtype: str | torch.dtype | None = None, **zoo_kwargs) -> Self:
        """This class's model by zoo name or from a user's Hub repo (``"hf-hub:owner/name"``), as `pt.create_model`,
        or from a converted file or a `save_pretrained` directory, as `pt.load_model`.

        A name of another task's model, or a file or repo holding one, is refused before anything is fetched or
        built. `device` (None: the CPU) and `dtype` ("auto" or None: the checkpoint's) place the model, also spelled
        as in transformers, `device_map` (one device) and `torch_dtype`. Other keyword arguments are
        `create_model`'s: `num_classes`, `endpoint`, `cache_dir`, `token` (huggingface_hub's: a str, True, False or
        None), `local_files_only` (the Hub cache only, no request) and `force_download` (download again, verified),
        and `mirror`, `manifest` for a zoo name or `revision` for a Hub repo; a file takes `local_files_only` only.
        """
        # The zoo client builds models through the registry, which imports these classes: import at call time.
        from ..zoo.pretrained import from_pretrained

        model = from_pretrained(cls.task, name_or_path, device=device, dtype=dtype, **zoo_kwargs)
        return cast(Self, model)  # of this class: from_pretrained refused every other task's model

    def save_pretrained(self, save_directory: str | os.PathLike, *, push_to_hub: bool = False,
                        **push_kwargs) -> Path:
        """Write the model as ``model.safetensors`` (`save_model`'s file: weights, task and config) into
        `save_directory`, created if needed; `from_pretrained(save_directory)` gives it back. Returns the file.

        As in transformers, ``push_to_hub=True`` then uploads that file with `pt.push_to_hub` (which logs the
        commit), to `repo_id` (default: the directory's name, in the token owner's namespace), taking its other
        keywords (`token`, `private`, `commit_message`, ...)."""
        from ..saving import save_model  # imports the registry, which imports these classes
        from ..zoo.push import push_to_hub as push
        from ..zoo.user_hub import FILENAME

        directory = Path(save_directory)
        repo_id = _repo_to_push(directory, push_to_hub, push_kwargs)  # before anything is written
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"save_pretrained: {directory} exists and is not a directory; give a directory "
                                     f"(it will hold {FILENAME}).")
        created = [d for d in (directory, *directory.parents) if not d.exists()]  # deepest first
        try:
            directory.mkdir(parents=True, exist_ok=True)
            path = save_model(cast(torch.nn.Module, self), directory / FILENAME)
        except BaseException:  # save_model (or mkdir) wrote nothing: no directory is left behind for it either
            for made in created:
                with contextlib.suppress(OSError):  # no longer empty: someone else's now
                    made.rmdir()
            raise
        if repo_id is not None:  # the file just written, uploaded unchanged (checked as anyone pulling it checks it)
            push(path, repo_id, **push_kwargs)
        return path

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """`pt.push_to_hub(self, repo_id, **kwargs)`: upload the model to the Hub repo 'owner/name' (or 'name', in
        the token owner's namespace) in one commit (`token`, `endpoint`, `revision`, `private`, `commit_message`,
        `overwrite_card`); returns the commit id."""
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
