"""Image files: which files are images, and decoding any of them to ``(H,W,3)`` uint8 RGB.

NumPy and Pillow only: ``deepfill-inpaint`` lists and checks its inputs with these before it
loads PyTorch.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from deepfill.utils.errors import UnreadableImageError

__all__ = ["IMAGE_EXTENSIONS", "list_images", "load_image"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode any image file to ``(H,W,3)`` uint8 RGB, EXIF orientation applied."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return _to_rgb8(image)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(f"{path}: {type(error).__name__}: {error}") from error


def _to_rgb8(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float images: scale by the format's range, not by the data.
        array = np.asarray(image, dtype=np.float64)
        full = 1.0 if mode == "F" and array.max() <= 1.0 else (65535.0 if mode != "F" else float(array.max()))
        gray = np.clip(array / full * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P":
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def list_images(root: Path) -> list[Path]:
    """Every file under ``root`` (recursive) with an image extension, sorted."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
