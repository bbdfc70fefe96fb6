"""Exported 2-D slices (BMP, PNG, JPEG): 8-bit, already windowed by the exporting viewer."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ccrcc_grade.core.errors import CcrccError

IMAGE_SUFFIXES = (".bmp", ".png", ".jpg", ".jpeg")


def read_gray(source: Path | bytes, name: str | Path = "") -> np.ndarray:
    """Read an image file (or encoded bytes) as a uint8 (H, W) gray array.

    RGB exports are converted with ITU-R 601 luma (Pillow's ``L`` mode); 16-bit PNGs are scaled to
    8 bit. Truncated or unreadable files raise :class:`CcrccError` naming the file.
    """
    label = name or source

    def open_():
        return Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)

    try:
        with open_() as im:  # chunk structure and checksums up to the end marker: a PNG cut short
            if im.format == "PNG":  # between its chunks decodes without complaint, black-filled
                im.verify()
        with open_() as im:
            im.load()  # forces a full decode, so files truncated inside the pixel data fail here
            if im.mode in ("I;16", "I;16B", "I"):
                arr = np.asarray(im, dtype=np.float64)
                hi = arr.max() or 1.0
                return np.clip(arr * (255.0 / hi), 0, 255).astype(np.uint8)
            return np.asarray(im.convert("L"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise CcrccError(f"{label}: image file not found") from None
    except Image.DecompressionBombError:
        raise CcrccError(
            f"{label}: image header claims an implausibly large image (decompression bomb); refused"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CcrccError(f"{label}: unreadable or truncated image ({exc})") from None
