"""`Model.from_pretrained(name_or_path)` on every task model, as transformers' classes have it."""

from __future__ import annotations

import os
from typing import Self, cast

import torch


class FromPretrained:
    """Gives a task model class (one with a `task`) the classmethod `from_pretrained`."""

    task: str

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype | None = None, **zoo_kwargs) -> Self:
        """This class's model by zoo name or from a user's Hub repo (``"hf-hub:owner/name"``), as `pt.create_model`,
        or from a converted file, as `pt.load_model`.

        A name of another task's model, or a file or repo holding one, is refused before anything is fetched or
        built. Keyword arguments beyond `device` and `dtype` are `create_model`'s: `num_classes`, `endpoint`,
        `cache_dir`, and `mirror`, `manifest` for a zoo name or `revision` for a Hub repo; a file takes none.
        """
        # The zoo client builds models through the registry, which imports these classes: import at call time.
        from ..zoo.pretrained import from_pretrained

        model = from_pretrained(cls.task, name_or_path, device=device, dtype=dtype, **zoo_kwargs)
        return cast(Self, model)  # of this class: from_pretrained refused every other task's model
