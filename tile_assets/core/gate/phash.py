"""Perceptual hash (DCT pHash): the same picture re-encoded or resized hashes nearly the same.

The classic construction (as in the `imagehash` package): grayscale, resize
to 32x32, 2-D DCT, keep the 8x8 lowest frequencies and set a bit where a
coefficient is above their median. Copies differ by a few bits; different
pictures by about half of the 64 (the sample images: 26 or more).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.fft import dctn

from tile_assets.core.gate.rendition import to_pil

HASH_BITS = 64
_SIDE = 32
_LOW = 8


def perceptual_hash(picture: np.ndarray) -> str:
    """The 64-bit pHash of a rendition, as 16 hex digits."""
    gray = to_pil(picture).convert("L").resize((_SIDE, _SIDE), Image.Resampling.LANCZOS)
    low = dctn(np.asarray(gray, dtype=np.float64), norm="ortho")[:_LOW, :_LOW]
    bits = (low > np.median(low)).flatten()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def hamming(a: str, b: str) -> int:
    """How many of the 64 bits two hex hashes differ in."""
    return (int(a, 16) ^ int(b, 16)).bit_count()
