"""`push_to_hub`: share a task model in a Hub repo, loadable by ``from_pretrained("hf-hub:owner/name")``.

The model is written by `save_model` as ``model.safetensors`` in a temporary directory (removed afterwards,
whatever happens), with a short model card ``README.md`` where the repo has none (or the caller asks to replace
it), then uploaded through ``huggingface_hub.HfApi`` as ONE commit (``create_repo`` if needed, ``create_branch``
for a new branch, ``create_commit`` on top of the commit whose files were looked at), to the Hugging Face Hub or
any Hub-compatible endpoint.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple, cast

from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError
from torch import nn

from ..foreign_checkpoints import CONFIG_FILE  # what a transformers model directory holds beside its weights
from ..registry import TASK_MODELS
from ..safetensors_io import read_header
from ..saving import save_model
from ..serialization import checked_metadata, load_model, read_metadata
from .hub import check_client_online, is_offline, one_line
from .pretrained import checkpoint_path, not_a_file
from .release_provenance import derives_from_release
from .schema import is_repo_id, is_repo_name
from .token import HOW_TO_SEND, checked_token
from .user_hub import FILENAME, HUB_PREFIX, HubError, checked_revision, hub_endpoint

log = logging.getLogger(__name__)
CARD = "README.md"  # the model card's name in a Hub repo

# What DeepMind's release asks of anything derived from its parameters (perceiver_torch/data/upstream_release.md).
UPSTREAM_LICENCE = ('DeepMind\'s released Perceiver IO parameters are licensed CC BY 4.0, with attribution: DeepMind, '
                    '"Perceiver IO: A General Architecture for Structured Inputs & Outputs" (Jaegle et al., 2021, '
                    'arXiv 2107.14795)')


# The Hub's task for each of ours that has one (its task filters and widget): the flow and video models have none.
PIPELINE_TAGS = {"language": "fill-mask", "imagenet": "image-classification"}


def model_card(repo_id: str, task: str, num_parameters: int, meta: dict[str, str] | None = None) -> str:
    """The README.md pushed beside a checkpoint whose metadata is `meta`: the licence in its front matter only
    where the metadata shows the weights derive from DeepMind's release (else it is the sharer's to state)."""
    cls = TASK_MODELS[task].__name__
    released = derives_from_release(meta or {})
    front = ["library_name: perceiver-torch"] + (["license: cc-by-4.0"] if released else []) + \
        ([f"pipeline_tag: {PIPELINE_TAGS[task]}"] if task in PIPELINE_TAGS else []) + [f"tags: [perceiver-io, {task}]"]
    licence = (f"These weights derive from DeepMind's released checkpoints: {UPSTREAM_LICENCE}." if released else
               "Stated by whoever shared this model. If its weights derive from DeepMind's released checkpoints (a "
               f"zoo\nmodel fine-tuned, or a release file converted), {UPSTREAM_LICENCE}.")
    newline = "\n"
    return f"""---
{newline.join(front)}
---

# {repo_id}

A Perceiver IO model for the `{task}` task (`perceiver_torch.{cls}`, {num_parameters:,} parameters), a
perceiver-torch checkpoint: `{FILENAME}` holds the weights and, in its metadata, the task and config
that rebuild the model.

```python
import perceiver_torch as pt
model = pt.{cls}.from_pretrained("{HUB_PREFIX}{repo_id}")  # or pt.create_model("{HUB_PREFIX}{repo_id}")
```

Loading checks this file as `perceiver_torch.load_model` checks a local one (safetensors only, no code
runs; config, tensor names, shapes and dtypes strict) and bounds its download; nobody has verified these
weights, unlike those of perceiver-torch's model zoo.

## Licence

{licence}
"""


def _checkpoint_file(path) -> Path:
    """`path` (or a save_pretrained directory's model.safetensors) as a Path to a regular file, else the error
    naming it (before a token is looked for or a copy made)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"push_to_hub: model must be a task model or a converted file's path; got "
                        f"{type(path).__name__}.")
    path = checkpoint_path(Path(path))
    if not path.is_file():
        raise FileNotFoundError(f"push_to_hub: {path}: {not_a_file(path)} (a converted .safetensors file or a "
                                "save_pretrained directory is expected)")
    return path


def _checked_copy(original: Path, copy: Path) -> nn.Module:
    """Copy `original` to `copy` and load the copy as anyone pulling it will (so that what is checked is what is
    uploaded, whatever happens to the file meanwhile); a refusal names `original`, as loading it would."""
    checked_metadata(original, read_header(original))  # what its header rules out, before a byte is copied
    shutil.copyfile(original, copy)
    try:
        return load_model(copy)
    except Exception:
        try:
            load_model(original)  # the same refusal, naming the user's file
        except Exception as named:
            raise named from None
        raise  # `original` changed since it was copied: the copy's own refusal


class Pushed(NamedTuple):
    """What `upload` did: the repo ('owner/name', a bare name's owner resolved), the commit id, and whether README.md
    was written (False when the repo's own card was kept)."""

    repo_id: str
    commit: str
    wrote_card: bool


def owners_repo(api: HfApi, name: str, where: str) -> str:
    """'owner/name' for the bare repo `name`, the owner being whom `api`'s token belongs to, as huggingface_hub
    resolves it (`HfApi.whoami`, then that user's namespace); a token the server refuses is named as such."""
    try:
        owner = api.whoami()["name"]
    except Exception as exc:  # huggingface_hub's HTTP errors (401: the token is not valid), connection errors
        refused = isinstance(exc, HfHubHTTPError) and exc.response is not None and exc.response.status_code == 401
        raise HubError(f"push_to_hub: {name!r} names no owner, and asking {where} whom the token belongs to (to "
                       f"push to that user's {name!r}) failed: {one_line(exc).rstrip('.')}. "
                       f"{'Check the token, or name' if refused else 'Name'} the repo 'owner/{name}'.") from exc
    if not isinstance(owner, str) or not is_repo_id(f"{owner}/{name}"):
        raise HubError(f"push_to_hub: {where} says the token belongs to {owner!r:.100}, which is no Hub "
                       f"namespace; name the repo 'owner/{name}'.")
    log.info("push_to_hub: %r is %s/%s (the token belongs to %s)", name, owner, name, owner)
    return f"{owner}/{name}"


def push_to_hub(model: nn.Module | str | os.PathLike, repo_id: str, *, token: str | bool | None = None,
                endpoint: str | None = None, revision: str | None = None, private: bool | None = None,
                commit_message: str | None = None, overwrite_card: bool = False) -> str:
    """Upload `model` to the Hub repo `repo_id` ('owner/name', or 'name' in the token owner's namespace, as
    huggingface_hub resolves it) in one commit; returns the commit id.

    `model` is written with `save_model` (everything it refuses is refused here, before any upload) as
    ``model.safetensors``, with a generated ``README.md`` model card where the repo (at `revision`) has none: a
    card already there (its licence, datasets, notes) is kept, as transformers and timm keep it, unless
    `overwrite_card` is True. The commit is made on top of the commit whose files were looked at, so a card
    pushed meanwhile by someone else is not replaced unseen (the upload fails instead). A path instead is a
    converted file
    (`save_model`'s or `perceiver-convert`'s), checked by `load_model` as anyone pulling it will check it, then
    uploaded unchanged (its provenance metadata kept). The repo is created if it does not
    exist (`private` applies then: None, as huggingface_hub's default, makes it public unless the owner's
    organisation makes repos private by default); `revision` names a branch, created from ``main`` if new (default:
    ``main``). `token` defaults to huggingface_hub's (``HF_TOKEN``, else ``hf auth login``'s), `endpoint`
    to ``$HF_ENDPOINT``, else the Hugging Face Hub. Others load it with
    ``Model.from_pretrained("hf-hub:<repo_id>", revision=<the commit id>)``.
    """
    return upload(model, repo_id, token=token, endpoint=endpoint, revision=revision, private=private,
                  commit_message=commit_message, overwrite_card=overwrite_card).commit


def checked_arguments(repo_id: str, *, token=None, endpoint=None, revision=None, private=None, overwrite_card=False,
                      **_unchecked) -> tuple[str | None, str | bool | None]:
    """Refuse `push_to_hub`'s arguments that cannot be right, before anything is written or asked (also for
    `save_pretrained(push_to_hub=True)`); returns (the branch, or None for main; the checked token)."""
    if not isinstance(repo_id, str) or (not is_repo_id(repo_id) and not is_repo_name(repo_id)):
        raise ValueError(f"push_to_hub: repo_id must be a Hub repo id 'owner/name', or a name for a repo of the "
                         f"token's owner (letters, digits, '.', '_' or '-'); got {repo_id!r:.200}.")
    if private is not None and type(private) is not bool:  # bool("no") is True: a string would flip it
        raise TypeError(f"push_to_hub: private must be True, False or None; got {type(private).__name__} "
                        f"{private!r:.40}.")
    if endpoint is not None and not isinstance(endpoint, str):
        raise TypeError(f"push_to_hub: endpoint must be a URL (a str); got {type(endpoint).__name__}.")
    if type(overwrite_card) is not bool:  # bool("no") is True: a string would replace the user's card
        raise TypeError(f"push_to_hub: overwrite_card must be True or False; got {type(overwrite_card).__name__} "
                        f"{overwrite_card!r:.40}.")
    return (None if revision is None else checked_revision(revision)), checked_token(token, "push_to_hub")


def write_token(token: str | bool | None, target: str) -> str:
    """The token an upload to `target` sends, as huggingface_hub's: a str is the token, None or True the machine's
    (HF_TOKEN, else `hf auth login`'s); False (send none), or no token on the machine, cannot upload."""
    sent = token if isinstance(token, str) else None if token is False else get_token()
    if not sent:
        raise HubError(f"push_to_hub: uploading to {target} needs a write token: pass one ({HOW_TO_SEND}), "
                       "set HF_TOKEN or log in with `hf auth login`.")
    return sent


def _target(where: str, repo_id: str, branch: str | None) -> str:
    """The repo an upload goes to, as its messages name it: endpoint, repo id and branch."""
    return f"{where}/{repo_id}" + (f" (branch {branch!r})" if branch else "")


def upload(model: nn.Module | str | os.PathLike, repo_id: str, *, token: str | bool | None, endpoint: str | None,
           revision: str | None, private: bool | None, commit_message: str | None,
           overwrite_card: bool) -> Pushed:
    """`push_to_hub`, saying where it pushed, the commit, and whether README.md was written."""
    source = None if isinstance(model, nn.Module) else _checkpoint_file(model)
    branch, token = checked_arguments(repo_id, token=token, endpoint=endpoint, revision=revision, private=private,
                                      overwrite_card=overwrite_card)
    where = hub_endpoint(endpoint)
    target = _target(where, repo_id, branch)
    if not is_offline():  # else huggingface_hub's own refusal says to unset it, rightly
        check_client_online(f"push_to_hub: uploading to {target}", HubError)
    token = write_token(token, target)
    api = HfApi(endpoint=where, token=token)
    with tempfile.TemporaryDirectory(prefix="perceiver-push-") as folder:
        path = Path(folder) / FILENAME
        if isinstance(model, nn.Module):  # refused here, before any request, if save_model refuses it
            save_model(model, path)
        else:  # `source` is the file `model` names, resolved above
            model = _checked_copy(cast(Path, source), path)
        if not is_repo_id(repo_id):  # a bare name: in the token owner's namespace, before anything is written
            repo_id = owners_repo(api, repo_id, where)
            target = _target(where, repo_id, branch)
        meta = read_metadata(path)
        task = meta["task"]
        num_parameters = sum(p.numel() for p in model.parameters())  # the file holds them all, strictly
        card = Path(folder) / CARD
        card.write_text(model_card(repo_id, task, num_parameters, meta), encoding="utf-8")
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            if branch is not None:
                api.create_branch(repo_id, branch=branch, exist_ok=True)
            parent = api.model_info(repo_id, revision=branch)
        except Exception as exc:  # huggingface_hub's HTTP errors, connection errors
            raise HubError(f"push_to_hub: upload to {target} failed: {one_line(exc)}") from exc
        there = {s.rfilename for s in parent.siblings or ()}
        if CONFIG_FILE in there:  # its model.safetensors would be ours: transformers would load random weights
            raise HubError(f"push_to_hub: {target} holds a transformers model ({CONFIG_FILE}); pushing would "
                           f"replace its {FILENAME} with ours, which transformers cannot read (it would initialise "
                           "every weight at random). Push to another repo; to update a transformers model, export with "
                           "perceiver-to-transformers and upload that directory.")
        write_card = overwrite_card or CARD not in there
        files = (path, card) if write_card else (path,)
        try:
            info = api.create_commit(
                repo_id, revision=branch, commit_message=commit_message or f"Upload {TASK_MODELS[task].__name__}",
                operations=[CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in files],
                parent_commit=parent.sha,  # the files looked at: a card pushed since then fails the commit
            )
        except Exception as exc:  # huggingface_hub's HTTP errors, connection errors
            raise HubError(f"push_to_hub: upload to {target} failed: {one_line(exc)}") from exc
    log.info("pushed %s to %s: commit %s (load it with from_pretrained(%r, revision=%r)); %s",
             TASK_MODELS[task].__name__, target, info.oid, HUB_PREFIX + repo_id, info.oid,
             f"wrote {CARD}" if write_card else f"kept the repo's {CARD} (overwrite_card=True replaces it)")
    return Pushed(repo_id, info.oid, write_card)
