"""Image files: which files are images, and decoding any of them to ``(H,W,3)`` uint8 RGB.

NumPy and Pillow only: ``deepfill-inpaint`` lists and checks its inputs with these before it
loads PyTorch.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from deepfill.utils.errors import UnreadableImageError, UserError

__all__ = [
    "IMAGE_EXTENSIONS",
    "crops_along_longer_side",
    "list_images",
    "load_image",
    "pair_images_with_masks",
]

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


def crops_along_longer_side(photo: np.ndarray, height: int, width: int) -> list[np.ndarray]:
    """Three ``(height, width, 3)`` uint8 crops of ``photo`` ``(H,W,3)`` uint8: its shorter side
    resized (bicubic) to twice the crop's larger side, then crops at the start, the middle and
    the end of its longer side, centred across the other."""
    image = Image.fromarray(photo)
    scale = 2 * max(height, width) / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    crops = []
    for t in (0.0, 0.5, 1.0):
        wide = image.width >= image.height
        left = round((image.width - width) * t) if wide else (image.width - width) // 2
        top = round((image.height - height) * t) if not wide else (image.height - height) // 2
        crops.append(np.asarray(image.crop((left, top, left + width, top + height))))
    return crops


def pair_images_with_masks(input_path: Path, mask_path: Path | None) -> list[tuple[Path, Path | None, Path]]:
    """(image, mask or None, relative output path) for a file or a folder of images: a folder's
    masks are found by the image's relative path, as ``.png`` or with the image's extension.
    Raises :class:`UserError` for a missing input or mask, or two images of one output name."""
    if not input_path.exists():
        raise UserError(f"input: no such file or folder: {input_path}")
    if input_path.is_file():
        if mask_path is not None and not mask_path.is_file():
            raise UserError(f"mask_path: no such file: {mask_path}")
        return [(input_path, mask_path, Path(input_path.stem + ".png"))]
    images = list_images(input_path)
    if not images:
        raise UserError(f"input: folder {input_path} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    if mask_path is not None and not mask_path.is_dir():
        raise UserError(f"mask_path: with an input folder, mask_path must be a folder too: {mask_path}")
    sources: dict[Path, Path] = {}
    for image in images:
        target = image.relative_to(input_path).with_suffix(".png")
        if target in sources:
            raise UserError(
                f"input: {sources[target]} and {image} would both be written as {target}; rename one"
            )
        sources[target] = image
    out = []
    for image in images:
        relative = image.relative_to(input_path)
        target = relative.with_suffix(".png")
        mask = None
        if mask_path is not None:
            candidates = [mask_path / relative.with_suffix(ext) for ext in (".png", relative.suffix)]
            mask = next((c for c in candidates if c.is_file()), None)
            if mask is None:
                raise UserError(f"mask_path: no mask for {image} (looked for {candidates[0]})")
        out.append((image, mask, target))
    return out
