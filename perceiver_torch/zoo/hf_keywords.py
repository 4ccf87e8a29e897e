"""The loading keywords transformers users pass, checked and mapped to ours: huggingface_hub's `local_files_only`
and `force_download` (how the file is fetched), transformers' `torch_dtype` (our `dtype`) and a one-device
`device_map` (our `device`)."""

from __future__ import annotations

import torch

from ..serialization import MODEL_DTYPES
from .hub import is_offline

# transformers' device_map strategies that spread a model over several devices; perceiver-torch loads onto one.
_SPREADING = ("auto", "balanced", "balanced_low_0", "sequential")


def checked_fetch(where: str, local_files_only, force_download) -> None:
    """Refuse (naming `where`, the function called) `local_files_only` / `force_download` that are not bools (a
    string such as "no" is truthy), both True, or `force_download` while HF_HUB_OFFLINE forbids downloads."""
    for name, value in (("local_files_only", local_files_only), ("force_download", force_download)):
        if type(value) is not bool:
            raise TypeError(f"{where}: {name} must be True or False; got {type(value).__name__} {value!r:.40}.")
    if local_files_only and force_download:
        raise ValueError(f"{where}: local_files_only=True reads the Hub cache only and force_download=True downloads "
                         "again; give one of them.")
    if force_download and is_offline():
        raise ValueError(f"{where}: force_download=True downloads again, but HF_HUB_OFFLINE is set (the Hub cache "
                         "only); unset it, or leave force_download out.")


def placement(where: str, device, dtype, torch_dtype, device_map) -> tuple[str | torch.device, torch.dtype | None]:
    """The (device, dtype) to load onto, from ours (`device`: None is the CPU; `dtype`) and transformers' spellings
    (`torch_dtype`, `device_map`); each given once, "auto" being the checkpoint's dtype (what None gives: the
    file's, float32 for a converted release)."""
    dtype = _one_of(where, "dtype", _dtype(where, "dtype", dtype), "torch_dtype",
                    _dtype(where, "torch_dtype", torch_dtype))
    device = _one_of(where, "device", device, "device_map", _one_device(where, device_map))
    return ("cpu" if device is None else device), dtype


def _dtype(where: str, name: str, value) -> torch.dtype | None:
    if isinstance(value, str) and value == "auto":
        return None  # the checkpoint's dtype: the file is loaded as it is
    found = value if isinstance(value, torch.dtype) else MODEL_DTYPES.get(value) if isinstance(value, str) else None
    if value is not None and found not in MODEL_DTYPES.values():
        raise ValueError(f"{where}: {name} must be one of {', '.join(MODEL_DTYPES)} (a name or the torch dtype) or "
                         f"'auto' (the checkpoint's); got {value!r:.40}.")
    return found


def _one_device(where: str, device_map) -> str | torch.device | None:
    """A `device_map` that puts the whole model on one device, as that device; else a ValueError saying what to
    give instead."""
    if isinstance(device_map, dict) and not device_map:
        raise ValueError(f"{where}: device_map={{}} places no module; give a device (device='cpu' or 'cuda:0') or "
                         "leave device_map out.")
    if isinstance(device_map, dict):
        # transformers' map of modules to devices: {"": d} (the root module), or every module on the same d
        places = {_same_device(_placed(value)) for value in device_map.values()}
        if len(places) == 1:
            device_map = device_map[next(iter(device_map))]
    if device_map is None or isinstance(device_map, torch.device) or type(device_map) is int:
        return None if device_map is None else _placed(device_map)
    if isinstance(device_map, str) and device_map not in _SPREADING:
        return device_map
    if isinstance(device_map, (str, dict)):
        raise ValueError(f"{where}: device_map={device_map!r:.80} spreads the model over devices, which "
                         "perceiver-torch does not do: it loads a model onto one device. Give that device: "
                         "device='cpu' or 'cuda:0' (or device_map=...).")
    raise TypeError(f"{where}: device_map must be a device (a str, torch.device or GPU index) or a map of modules "
                    f"to one device; got {type(device_map).__name__} {device_map!r:.40}.")


def _placed(device) -> str | torch.device:
    """A device of a device_map as our `device` takes it: a GPU index as transformers means it, 'cuda:N'."""
    return f"cuda:{device}" if type(device) is int else device


def _one_of(where: str, ours: str, value, theirs: str, their_value):
    """`value` or `their_value` (None: not given), refused if both are given and differ."""
    if their_value is None:
        return value
    if value is not None and _same_device(value) != _same_device(their_value):  # 'cuda' and 'cuda:0' alike
        raise TypeError(f"{where}: {ours}={value!r} and {theirs}={their_value!r} were both given; give one "
                        f"({theirs} is transformers' spelling of {ours}).")
    return their_value


def _same_device(value) -> str:
    """`value` (a device or a dtype) as text that two spellings of one share: 'cuda' and torch.device('cuda:0')
    are 'cuda:0', as torch places a tensor on the current GPU, index 0 unless set otherwise."""
    text = str(value)
    return "cuda:0" if text == "cuda" else text
