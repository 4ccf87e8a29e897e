"""The `token` argument of the download functions, as huggingface_hub takes it: a str is sent as the access token;
True sends the machine's (``HF_TOKEN``, else ``hf auth login``'s) and requires one; None sends the machine's if
there is one; False sends none. Checked before any request, and never shown in a message (it is a secret)."""

from __future__ import annotations

from huggingface_hub import get_token


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
    # An HTTP header is ASCII: a character beyond it failed in the request, its error quoting it and its position.
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise ValueError(f"{where}: token ({len(token)} characters, not shown) holds whitespace, control or non-ASCII "
                         "characters; a Hub access token has none (copy it again without them).")
    return token
