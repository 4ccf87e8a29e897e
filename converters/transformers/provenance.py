"""What an exported model card says about where its weights came from, and under which licence.

DeepMind's released Perceiver IO parameters are licensed CC BY 4.0 (with attribution; the release's code
is Apache 2.0: perceiver_torch/data/upstream_release.md). A checkpoint converted from a release file, from
a transformers `deepmind/*` repo or from a file the zoo's manifest pins derives from them; one that records
no source (e.g. a model saved with `save_model`) may or may not, and its card says so.
"""

from __future__ import annotations

from perceiver_torch.message_text import printable
from perceiver_torch.zoo.push import UPSTREAM_LICENCE
from perceiver_torch.zoo.release_provenance import derives_from_release

MAX_SHOWN = 200  # characters of a metadata value shown in a card


def shown(value: str) -> str:
    """A metadata value (from the checkpoint: hostile) as text for inside a Markdown code span."""
    return printable(value, MAX_SHOWN).replace("`", "'")


def source_sentence(meta: dict) -> str:
    """Where the weights came from, as far as the checkpoint's metadata says."""
    sha = f" (weights sha256 `{shown(meta['source_sha256'])}`)" if meta.get("source_sha256") else ""
    if meta.get("source_repo"):
        revision = f" at revision `{shown(meta['source_revision'])}`" if meta.get("source_revision") else ""
        return f"Weights converted from the Hub repo `{shown(meta['source_repo'])}`{revision}{sha}"
    if meta.get("source_name"):
        return f"Weights converted from `{shown(meta['source_name'])}`{sha}"
    return ("Weights from a perceiver-torch checkpoint that records no source file (as `save_model` writes one, "
            "e.g. for a model trained or fine-tuned with perceiver-torch)")


def licence(meta: dict) -> tuple[str, str]:
    """(the card's `license:` value, its licence and attribution text)."""
    code = "DeepMind's code for Perceiver IO is licensed Apache 2.0."
    if derives_from_release(meta):
        return "cc-by-4.0", f"These weights derive from DeepMind's released checkpoints. {UPSTREAM_LICENCE}. {code}"
    return "other", ("Nothing this checkpoint records shows that its weights derive from DeepMind's release, so their "
                     "licence is for whoever made them to state (`license: other` above). If they derive from "
                     "DeepMind's released checkpoints (a release file or `deepmind/*` repo converted, or a model "
                     f"fine-tuned from one), set `license: cc-by-4.0`: {UPSTREAM_LICENCE}. {code}")
