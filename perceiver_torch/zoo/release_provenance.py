"""Whether a checkpoint's weights derive from DeepMind's release, as far as its metadata says: what a model card
states as the weights' licence (the release's parameters are CC BY 4.0, with attribution; its code Apache 2.0:
perceiver_torch/data/upstream_release.md).

A checkpoint converted from a release file (its sha256 one the shipped manifest pins) or from a transformers
`deepmind/*` repo derives from the release; one that records no source (a model saved with `save_model`) may or
may not, and a card says so.
"""

from __future__ import annotations

from functools import cache

from .manifest import entries, packaged_manifest_path

DEEPMIND_ORG = "deepmind/"  # transformers' conversions of the release on the Hub


@cache
def released_sha256s() -> frozenset[str]:
    """The sha256 of every file of DeepMind's release that the shipped zoo manifest pins (and of its
    transformers conversions, where an entry pins one): the package's own, not $PERCEIVER_ZOO_MANIFEST's (a test
    manifest, or a path that is gone, said nothing of the release)."""
    found = set()
    for entry in entries(packaged_manifest_path()).values():
        if entry.get("kind") == "released":
            source = entry["source"]
            found.add(source["sha256"])
            found.add((source.get("transformers") or {}).get("sha256"))
    return frozenset(s for s in found if isinstance(s, str))


def derives_from_release(meta: dict) -> bool:
    """Whether the metadata `meta` records a source in DeepMind's release (a pinned file, a deepmind/* repo)."""
    return meta.get("source_sha256") in released_sha256s() or \
        str(meta.get("source_repo", "")).startswith(DEEPMIND_ORG)
