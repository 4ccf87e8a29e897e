"""`perceiver-convert TASK CHECKPOINT (--config CONFIG.json | --preset NAME) -o OUT.safetensors`,
or `perceiver-convert TASK --from-transformers DIR_OR_REPO [--revision R] -o OUT.safetensors`.

Bad input (a config, checkpoint or output path that cannot be used) is reported as
`perceiver-convert: error: ...` with the list of problems and exit status 1, never a traceback;
bad arguments exit 2 (argparse).
"""

from __future__ import annotations

import sys

from perceiver_torch.config_schema import ConfigError
from perceiver_torch.registry import TASKS, preset_names
from perceiver_torch.version import add_version_flag
from perceiver_torch.zoo.token import TokenSafeParser, add_token_option

from .checkpoint_reader import CheckpointReadError
from .cli_support import show_logs, write_or_report
from .convert import convert, preset_config
from .rules import ConversionError
from .transformers import from_transformers

PROG = "perceiver-convert"


def main(argv: list[str] | None = None) -> int:
    parser = TokenSafeParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_version_flag(parser)
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("checkpoint", nargs="?", help="upstream Haiku .pickle / .pystate file")
    parser.add_argument("--from-transformers", metavar="DIR_OR_REPO",
                        help="read a transformers Perceiver model (directory or Hub repo id) instead; float16 "
                             "and bfloat16 weights are widened to float32 exactly, float64 rounded with a warning")
    parser.add_argument("--revision", help="Hub revision for --from-transformers (default: main)")
    add_token_option(parser, "--from-transformers' Hub requests (a private or gated repo)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", help="config.json (upstream constructor kwargs + model constants)")
    source.add_argument("--preset", choices=preset_names(), help="a released configuration")
    parser.add_argument("-o", "--output", required=True, help="output .safetensors path")
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    args = parser.parse_args(argv)
    if args.from_transformers and (args.checkpoint or args.config or args.preset):
        parser.error("--from-transformers reads the config from the model; give no CHECKPOINT, --config or --preset.")
    if not args.from_transformers and (args.revision or args.token or not args.checkpoint
                                       or not (args.config or args.preset)):
        parser.error("give CHECKPOINT and one of --config / --preset, or --from-transformers [--revision] [--token].")

    config = args.config
    if args.preset:
        preset_task, config = preset_config(args.preset)
        if preset_task != args.task:
            parser.error(f"preset {args.preset!r} is a {preset_task!r} model, not {args.task!r}.")
    show_logs(f"{PROG}: %(message)s")

    def write():
        if args.from_transformers:
            return from_transformers(args.task, args.from_transformers, args.output, args.revision,
                                     overwrite=args.force, token=args.token)
        return convert(args.task, args.checkpoint, config, args.output, overwrite=args.force)

    try:
        return write_or_report(PROG, write,
                               (ConfigError, ConversionError, CheckpointReadError, OSError, ValueError, MemoryError))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing was written.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
