"""`class_names` on the models with class logits: names of their own, which save_model and load_model carry."""

from __future__ import annotations

from collections.abc import Sequence

from .. import class_names as names_field


class NamedClasses:
    """A model's own class names (`class_names`), None where it has none: its `labels` are then the released
    dataset's names or the class indices. Checked when set, as `load_model` checks a file's."""

    num_classes: int
    _class_names: tuple[str, ...] | None = None

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """The names this model's classes were given (fine-tuned in transformers and imported, set in code, or
        loaded from a file that holds them), in logit order; None if none were. `save_model` writes them."""
        return self._class_names

    @class_names.setter
    def class_names(self, names: Sequence[str] | None) -> None:
        where = f"{type(self).__name__}.class_names"
        self._class_names = None if names is None else names_field.checked(names, self.num_classes, where)
