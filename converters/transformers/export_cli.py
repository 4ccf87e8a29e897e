"""`perceiver-to-transformers MODEL -o DIR`: write a transformers model directory.

MODEL is a converted .safetensors file, a `save_pretrained` directory, or a user's Hub repo
`hf-hub:owner/name` (`--revision`, `--token`; downloaded into the Hub cache as `create_model` downloads it). DIR gets
config.json, model.safetensors and a README.md model card listing what transformers still computes
differently (an image classifier also a preprocessor_config.json, the language model a
tokenizer_config.json); `transformers.PerceiverFor*.from_pretrained(DIR)` loads it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from perceiver_torch.serialization import CheckpointFormatError
from perceiver_torch.version import add_version_flag
from perceiver_torch.zoo import ZooError
from perceiver_torch.zoo.pretrained import checkpoint_path
from perceiver_torch.zoo.token import TokenSafeParser, add_token_option
from perceiver_torch.zoo.user_hub import hub_checkpoint, is_hub_name, parse_hub_name

from ..cli_support import write_or_report
from ..rules import ConversionError
from .config_map import ConfigMismatchError
from .exporter import ExportError, to_transformers


def converted_file(model: str, revision: str | None, token: str | None = None) -> Path:
    """The perceiver-torch file MODEL names: itself, a save_pretrained directory's model.safetensors, or an hf-hub:
    repo's, downloaded into the Hub cache (header checked before the body, as create_model downloads it; `token`
    sent as huggingface_hub sends it, None being this machine's if any)."""
    if is_hub_name(model):  # hf_hub: and @REVISION as timm takes them
        return hub_checkpoint(*parse_hub_name(model, revision), token=token)
    return checkpoint_path(Path(model))


def main(argv: list[str] | None = None) -> int:
    parser = TokenSafeParser(prog="perceiver-to-transformers", description=__doc__)
    add_version_flag(parser)
    parser.add_argument("converted", metavar="MODEL", help="a perceiver-torch .safetensors (from perceiver-convert or "
                        "save_model), a save_pretrained directory, or hf-hub:owner/name")
    parser.add_argument("-o", "--output", required=True, help="new (or empty) output directory")
    parser.add_argument("--revision", help="hf-hub: repos: a branch, tag or commit (default: main)")
    add_token_option(parser, "hf-hub: repos' download (a private or gated repo needs one with access)")
    args = parser.parse_args(argv)
    for flag, value in (("--revision", args.revision), ("--token", args.token)):
        if value is not None and not is_hub_name(args.converted):
            parser.error(f"{flag} applies to hf-hub:owner/name repos only")
    return write_or_report(
        "perceiver-to-transformers", lambda: to_transformers(converted_file(args.converted, args.revision, args.token),
                                                             args.output),
        (ConfigMismatchError, ConversionError, CheckpointFormatError, ExportError, OSError, ValueError, ZooError))


if __name__ == "__main__":
    sys.exit(main())
