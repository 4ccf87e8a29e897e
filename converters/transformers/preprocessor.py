"""The preprocessor_config.json written beside an exported image classifier.

It sets transformers' PerceiverImageProcessor (read from transformers 5.x
`models/perceiver/image_processing*_perceiver.py`) as close to the colab's ImageNet preprocessing
(`perceiver_torch.imagenet_preprocessing`) as its settings allow: the same centred square crop of
size / (size + 32) of the shorter side, the model's input size, bicubic resizing and the same
mean and standard deviation. What no setting can change is in catalog.py (`image_preprocessing`).
The optical flow model gets none: transformers has no processor for its input (3x3 patches of two
frames, which callers build themselves), nor does the video autoencoder.
"""

from __future__ import annotations

from perceiver_torch.imagenet_preprocessing import CROP_MARGIN, MEAN_RGB, STDDEV_RGB

PREPROCESSOR_FILE = "preprocessor_config.json"
PIL_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, as transformers' PILImageResampling numbers it


def preprocessor_config(task: str, config: dict) -> dict | None:
    """The preprocessor_config.json fields for an exported `task` model, or None where none applies."""
    if task != "imagenet":
        return None
    height, width = (int(s) for s in config["image_size"])
    return {
        "image_processor_type": "PerceiverImageProcessor",
        # The crop side is int(size / crop_size * shorter side): size / (size + 32), as the colab's.
        "do_center_crop": True, "crop_size": {"height": height + CROP_MARGIN, "width": width + CROP_MARGIN},
        "do_resize": True, "size": {"height": height, "width": width}, "resample": PIL_BICUBIC,
        # (x / 255 - mean / 255) / (std / 255) is the colab's (x - mean) / std.
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": [round(m / 255, 6) for m in MEAN_RGB],
        "image_std": [round(s / 255, 6) for s in STDDEV_RGB],
    }
