"""Model cards name only code that exists, and the published test cards are the ones the manifest gives."""

from __future__ import annotations

import importlib
import re

import pytest

from converters.transformers.card import model_card as transformers_card
from converters.transformers.config_map import ARCHITECTURES
from converters.zoo.regenerate import model_card as zoo_card
from parity_tests.zoo_support import TEST_HUB, TEST_MANIFEST
from perceiver_torch.hashing import sha256_file
from perceiver_torch.zoo import entries

# A dotted name in our packages or transformers' (`perceiver_torch.create_model`, `converters.parity.run_parity`);
# file paths use slashes and are not matched.
DOTTED = re.compile(r"\b(?:perceiver_torch|converters|transformers)(?:\.[A-Za-z_]\w*)+")
# Stands in for the figures of an entry that is not produced yet, so that its card text (source,
# preprocessing) can be rendered too.
UNMEASURED = {"parity": {"runs": [], "known_checks": [], "converter_version": "-", "date": "-", "versions": {}},
              "artifact": {"filename": "model.safetensors", "size": 0, "sha256": "-"}}


def _zoo_cards() -> dict[str, str]:
    cards = {}
    for manifest in (None, TEST_MANIFEST):
        for name, entry in entries(manifest).items():
            parity = entry.get("parity") or UNMEASURED["parity"]
            cards[f"zoo card {name}"] = zoo_card(name, entry, parity, entry.get("artifact") or UNMEASURED["artifact"])
    return cards


def _transformers_cards() -> dict[str, str]:
    return {f"transformers card {arch}": transformers_card(task, arch, {}, {}) for arch, (task, _) in
            ARCHITECTURES.items()}


def _published_test_cards() -> dict[str, str]:
    return {f"published {p.relative_to(TEST_HUB)}": p.read_text() for p in sorted(TEST_HUB.rglob("README.md"))}


def resolve(dotted: str):
    """The object a dotted name names: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        module = ".".join(parts[:split])
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if module != exc.name and not module.startswith(f"{exc.name}."):
                raise  # the module exists but lacks a dependency: not a name to shorten
            continue
        for attr in parts[split:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("cards", [_zoo_cards, _transformers_cards, _published_test_cards])
def test_every_dotted_name_in_a_card_resolves(cards):
    names = {(where, name) for where, text in cards().items() for name in DOTTED.findall(text)}
    assert names, "no dotted names found: the pattern or the cards changed"
    unresolved = []
    for where, name in sorted(names):
        try:
            resolve(name)
        except (ImportError, AttributeError) as exc:
            unresolved.append(f"{where}: {name} ({type(exc).__name__}: {exc})")
    assert not unresolved, "\n".join(unresolved)


def test_published_test_cards_are_the_cards_their_entries_give():
    published = 0
    for name, entry in entries(TEST_MANIFEST).items():
        artifact = entry["artifact"]
        card = TEST_HUB / artifact["repo_id"] / artifact["revision"] / "README.md"
        assert card.read_text() == zoo_card(name, entry, entry["parity"], artifact), name
        assert sha256_file(card) == artifact["card_sha256"], name
        published += 1
    assert published == len(list(TEST_HUB.rglob("README.md"))), "a card in the stand-in tree no entry pins"


def test_resolve_refuses_a_name_that_is_gone():
    assert resolve("converters.parity.run_parity") is importlib.import_module("converters.parity").run_parity
    with pytest.raises(AttributeError):  # moved to converters.parity
        resolve("perceiver_torch.parity.run_parity")
    with pytest.raises(ModuleNotFoundError):
        resolve("perceiver_torch_gone.parity")
