"""Every picture as 8-bit RGB, whatever mode its file has (the models' processors expect RGB).

A plain ``image.convert("RGB")`` is wrong for some modes: it drops the alpha channel (transparent
pixels show whatever colour they store, often black) and clips 16-bit samples (most of a 16-bit
greyscale picture turns white). :func:`to_rgb` converts by mode:

=====================================  ==============================================================
mode                                   conversion
=====================================  ==============================================================
``RGB``                                unchanged (the same object)
``RGBA``, ``LA``, ``RGBa``, ``La``,    composited on white (transparent -> white, half-transparent
``PA``, ``P`` with transparency        -> blended with white)
``P`` (palette)                        looked up in its palette
``L`` (grey), ``1`` (black and white)  grey replicated to R, G and B (``1``: 0 or 255)
``CMYK``, ``YCbCr``, ``LAB``, ``HSV``  Pillow's conversion (CMYK: the naive ``255 - C - K`` formula)
``I;16``, ``I;16L``, ``I;16B``,        16-bit samples scaled to 8 bit (``v * 255 / 65535``, clipped to
``I;16N``, ``I``                       0..65535 first: Pillow opens 16-bit PNG / TIFF as these), then grey
``F`` (float)                          clipped to 0..1 and scaled to 0..255 when all values lie in 0..1,
                                       else clipped to 0..255; then grey
=====================================  ==============================================================

Tested per mode in ``tests/test_data_loader_hardening.py``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["to_rgb", "WHITE"]

WHITE = (255, 255, 255)

_ALPHA_MODES = ("RGBA", "LA", "RGBa", "La", "PA")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _grey(levels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(levels).astype(np.uint8), mode="L").convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as an 8-bit ``RGB`` picture, converted by mode as the module docstring's table says."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE + (255,)), rgba).convert("RGB")
    if mode in _SIXTEEN_BIT:
        samples = np.asarray(image, dtype=np.float64)
        return _grey(np.clip(samples, 0, 65535) * 255.0 / 65535.0)
    if mode == "F":
        samples = np.nan_to_num(np.asarray(image, dtype=np.float64))
        in_unit = samples.size and samples.min() >= 0.0 and samples.max() <= 1.0
        return _grey(samples * 255.0 if in_unit else np.clip(samples, 0, 255))
    return image.convert("RGB")
