"""Run a Torch task model on inputs in upstream's layout (the golden `io.npz` one).

Each runner takes `inputs` named as the golden `input/...` keys without the
prefix (numpy, channels-last as upstream) and returns numpy outputs named as
the `output/...` keys, in upstream's layout. `converters.tasks` registers one per
task; the parity harness, the golden tests and the zoo's checks all compare
through `converters.tasks.run_upstream_layout`, so there is one place that knows each layout.
"""

from __future__ import annotations

import numpy as np
import torch


def _tensor(x: np.ndarray, device, dtype=None) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    return t.to(dtype) if dtype is not None else t


def _numpy(t: torch.Tensor) -> np.ndarray:
    # numpy has no bfloat16: reduced-precision outputs are widened (exactly) to float32.
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.detach().cpu().numpy()


def language(model, inputs, device, dtype):
    ids = _tensor(inputs["inputs"], device).long()
    mask = _tensor(inputs["input_mask"], device)
    return {"logits": _numpy(model(ids, mask))}


def imagenet(model, inputs, device, dtype):
    # Upstream images are channels-last [B, H, W, 3]; the Torch model takes [B, 3, H, W].
    images = _tensor(inputs["images"], device, dtype).permute(0, 3, 1, 2)
    return {"logits": _numpy(model(images))}


def video_autoencoding(model, inputs, device, dtype):
    # Upstream frames are channels-last [B, F, S, S, 3]; the Torch model takes [B, F, 3, S, S].
    images = _tensor(inputs["images"], device, dtype).permute(0, 1, 4, 2, 3)
    audio = _tensor(inputs["audio"], device, dtype)
    # Without indices the reference decodes every point as subsampled ones (arange: the colab's query grid and
    # upstream's flat output layout); so does this, rather than the model's own whole-clip decode (linspace grid).
    every = {"image": model.num_image_points, "audio": model.num_audio_patches}
    subsample = {name: _tensor(inputs[f"subsample_{name}"], device).long() if f"subsample_{name}" in inputs
                 else torch.arange(count, device=device) for name, count in every.items()}
    outputs = model(images, audio, subsample)
    return {name: _numpy(outputs[name]) for name in ("image", "audio", "label")}


def optical_flow(model, inputs, device, dtype):
    # Upstream stacks both frames channels-last [B, 2, H, W, 3]; the Torch model takes two [B, 3, H, W].
    images = _tensor(inputs["images"], device, dtype).permute(0, 1, 4, 2, 3)
    return {"flow": _numpy(model(images[:, 0], images[:, 1]).permute(0, 2, 3, 1))}

