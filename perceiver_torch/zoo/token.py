"""The `token` argument of the download functions, as huggingface_hub takes it: a str is sent as the access token;
True sends the machine's (``HF_TOKEN``, else ``hf auth login``'s) and requires one; None sends the machine's if
there is one; False sends none. Checked before any request, and never shown in a message (it is a secret).

The command lines take it as huggingface_hub's CLI does, ``--token TOKEN`` (`add_token_option`), checked alike."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

from huggingface_hub import get_token

# How to send a token, for refusals that the Python API and the command lines share.
HOW_TO_SEND = "token='hf_...' in Python, --token on the command line"
NOT_SHOWN = "<token, not shown>"


def checked_token(token, where: str) -> str | bool | None:
    """`token`, refused (naming `where`, the function called) unless huggingface_hub could send it: a non-empty
    str fit for an HTTP header (printable ASCII, no whitespace), a bool or None; True with no token on the machine."""
    if token is None or type(token) is bool:
        if token is True and not get_token():
            raise ValueError(f"{where}: token=True sends this machine's Hub token, but there is none: set HF_TOKEN, "
                             "log in with `hf auth login`, or pass the token itself (token='hf_...').")
        return token
    if not isinstance(token, str):
        raise TypeError(f"{where}: token must be a str (a Hub access token), True, False or None; got "
                        f"{type(token).__name__}.")
    if not token:
        raise ValueError(f"{where}: token is empty; pass a Hub access token, or None for this machine's "
                         "(HF_TOKEN or `hf auth login`'s), or False to send none.")
    problem = _unsendable(token)
    if problem:
        raise ValueError(f"{where}: token {problem}.")
    return token


def _unsendable(token: str) -> str | None:
    """Why the non-empty `token` cannot go in an HTTP header, without showing it; None if it can."""
    # An HTTP header is ASCII: a character beyond it failed in the request, its error quoting it and its position.
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        return (f"({len(token)} characters, not shown) holds whitespace, control or non-ASCII characters; a Hub "
                "access token has none (copy it again without them)")
    return None


def token_argument(value: str) -> str:
    """argparse's `type` for ``--token``: the token, or an ArgumentTypeError that does not show it (argparse
    quotes the value of any other error: a secret on the terminal, in CI logs)."""
    if not value:
        raise argparse.ArgumentTypeError("is empty; give a Hub access token, or leave --token out to use this "
                                         "machine's (HF_TOKEN, else `hf auth login`'s)")
    problem = _unsendable(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def add_token_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--token TOKEN`` on `parser`, as huggingface_hub's CLI spells it; `what` says what it is sent for."""
    parser.add_argument("--token", type=token_argument, help=f"a Hub access token, sent for {what} (default: "
                        "HF_TOKEN, else `hf auth login`'s); a token on the command line is visible to other users of "
                        "this machine (ps) and kept in shell history: prefer HF_TOKEN=... or `hf auth login`")


# A Hub access token inside any word (`--hf-token=hf_...`, as other tools spell the option).
_HUB_TOKEN = re.compile(r"hf_[A-Za-z0-9_]+")


def _possible_tokens(argv: Sequence[str]) -> set[str]:
    """The words of `argv` that may be a token: the value of --token (also written --token=T, abbreviated, or as
    other tools spell it: any option naming a token, --hf-token, --use-auth-token, --tokn), and anything shaped
    like a Hub access token (hf_...) wherever it stands."""
    found = set()
    for index, word in enumerate(argv):
        option, joined, value = word.partition("=")
        named = option.startswith("--") and "tok" in option.lower()
        if named or (len(option) > 2 and "--token".startswith(option)):
            found.add(value if joined else argv[index + 1] if index + 1 < len(argv) else "")
        found.update(_HUB_TOKEN.findall(word))
    return {word for word in found if word}


def _redacted(message: str, secrets: set[str]) -> str:
    """`message` with each of `secrets` replaced where it stands as a whole word (a short token equal to a
    letter or a command name leaves the rest of the message readable)."""
    for secret in sorted(secrets, key=len, reverse=True):
        message = re.sub(rf"(?<![\w-]){re.escape(secret)}(?![\w-])", NOT_SHOWN, message)
    return message


class TokenSafeParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors never show a token: argparse quotes the words it could not place
    (`--token T` before the command, on a command that does not take it, misspelt), which would print a secret to
    the terminal and CI logs. Subcommands' parsers are of this class too (add_subparsers makes them so)."""

    _argv: Sequence[str] = ()

    def parse_known_args(self, args=None, namespace=None):
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):  # argparse's exit_on_error=False raises instead: none of ours sets it
        super().error(_redacted(message, _possible_tokens(self._argv)))
