"""Image sources: folders, the official flist format, embedded sample photos, procedural textures.

A source maps ``(index, rng)`` to an image ``(3,H,W)`` float32 in [-1,1], RGB, of side
``image_size``. ``rng`` is None for evaluation (deterministic resize + centre crop) and a
``numpy.random.Generator`` for training (random crop + horizontal flip).

Any input is accepted: grayscale, RGBA/LA (alpha dropped), palette, CMYK, 16-bit and float
images, EXIF orientation. Unreadable files (empty, truncated, not an image) are skipped with a
warning and counted; past ``max_bad_fraction`` of the source the run stops with an error that
lists some of them.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from deepfill.data.image_files import IMAGE_EXTENSIONS, list_images, load_image
from deepfill.utils.errors import UnreadableImageError, UserError
from deepfill.utils.images import to_tensor

__all__ = [
    "IMAGE_EXTENSIONS",
    "FileImages",
    "ImageSource",
    "SampleImages",
    "TextureImages",
    "UnreadableImageError",
    "flist",
    "image_folder",
    "list_images",
    "load_image",
]


def _fit(
    array: np.ndarray, image_size: int, rng: np.random.Generator | None, small: str, crop: str = "random"
) -> np.ndarray | None:
    """Resize/crop an ``(H,W,3)`` uint8 array to ``image_size`` square.

    Training (``rng`` given): a random crop at the native scale (``crop="random"``) or the whole
    image resized to the square (``crop="resize"``: the official ``RANDOM_CROP: False``), then a
    random horizontal flip; with ``"random"``, images whose shorter side is below ``image_size``
    are upscaled (``small="upscale"``) or rejected (``small="skip"``: returns None).
    Evaluation: the shorter side is resized to ``image_size``, then a centre crop.
    """
    height, width = array.shape[:2]
    short = min(height, width)
    if rng is not None and crop == "resize":
        if (height, width) != (image_size, image_size):
            array = np.asarray(Image.fromarray(array).resize((image_size, image_size), Image.BICUBIC))
        return array[:, ::-1] if rng.random() < 0.5 else array
    if rng is None or short < image_size:
        if short < image_size and small == "skip":
            return None
        if rng is None or short != image_size:
            scale = image_size / short
            size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
            array = np.asarray(Image.fromarray(array).resize(size, Image.BICUBIC))
            height, width = array.shape[:2]
    if rng is None:
        top, left = (height - image_size) // 2, (width - image_size) // 2
    else:
        top = int(rng.integers(0, height - image_size + 1))
        left = int(rng.integers(0, width - image_size + 1))
    array = array[top : top + image_size, left : left + image_size]
    if rng is not None and rng.random() < 0.5:
        array = array[:, ::-1]
    return array


class ImageSource(torch.utils.data.Dataset):
    """Base class: ``get(index, rng) -> (3,S,S)`` in [-1,1]; ``__getitem__`` is the eval form."""

    image_size: int

    def get(self, index: int, rng: np.random.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.get(index, None)


class FileImages(ImageSource):
    """Images from a list of files, robust to unreadable ones.

    Args:
        files: image paths.
        image_size: output side.
        small: ``"upscale"`` or ``"skip"`` images smaller than ``image_size``.
        crop: training crops, ``"random"`` (a random ``image_size`` crop at the native scale, as
            the official code for Places2) or ``"resize"`` (the whole image resized to the
            square, the official ``RANDOM_CROP: False`` used for CelebA-HQ).
        max_bad_fraction: stop with an error once more than this fraction of the files was
            unreadable (or skipped as too small).
        scan: open every file's header now, so that empty and non-image files are dropped
            before training starts (truncated data is only found when decoded).
        name: used in messages (the folder or flist path).
    """

    def __init__(
        self,
        files: Sequence[str | os.PathLike],
        image_size: int = 256,
        small: str = "upscale",
        max_bad_fraction: float = 0.01,
        scan: bool = True,
        name: str = "",
        crop: str = "random",
    ) -> None:
        if small not in ("upscale", "skip"):
            raise ValueError(f"small must be 'upscale' or 'skip', got {small!r}")
        if crop not in ("random", "resize"):
            raise ValueError(f"crop must be 'random' or 'resize', got {crop!r}")
        self.crop = crop
        if image_size < 8 or image_size % 8:
            raise ValueError(f"image_size must be a positive multiple of 8, got {image_size!r}")
        self.name = name or "image list"
        self.image_size, self.small, self.max_bad_fraction = image_size, small, max_bad_fraction
        self.total = len(files)
        self.bad: dict[str, str] = {}
        paths = [Path(f) for f in files]
        if scan:
            problems = {str(p): self._header_problem(p) for p in paths}
            self.bad = {p: reason for p, reason in problems.items() if reason is not None}
            self._check_bad_fraction()
            if self.bad:
                listed = ", ".join(f"{p} ({r})" for p, r in list(self.bad.items())[:3])
                more = f" and {len(self.bad) - 3} more" if len(self.bad) > 3 else ""
                warnings.warn(
                    f"{self.name}: skipping {len(self.bad)} unreadable file(s): {listed}{more}",
                    RuntimeWarning,
                    stacklevel=2,
                )
            paths = [p for p in paths if problems[str(p)] is None]
        if not paths:
            raise ValueError(f"{self.name}: no readable images")
        self.files = paths

    @staticmethod
    def _header_problem(path: Path) -> str | None:
        try:
            if path.stat().st_size == 0:
                return "empty file"
            with Image.open(path) as image:
                image.size  # noqa: B018 - reading the header is the check
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
            return f"{type(error).__name__}: {error}"
        return None

    def _record_bad(self, path: Path, reason: str) -> None:
        if str(path) in self.bad:
            return
        self.bad[str(path)] = reason
        warnings.warn(f"skipping unreadable image {path} ({reason})", RuntimeWarning, stacklevel=3)
        self._check_bad_fraction()

    def _check_bad_fraction(self) -> None:
        if len(self.bad) > self.max_bad_fraction * max(self.total, 1):
            path, reason = next(iter(self.bad.items()))
            raise UserError(
                f"{self.name}: {len(self.bad)} of {self.total} images are unreadable, more than "
                f"max_bad_fraction={self.max_bad_fraction}; e.g. {path}: {reason}"
            )

    def __len__(self) -> int:
        return len(self.files)

    def get(self, index: int, rng: np.random.Generator | None) -> torch.Tensor:
        # An unreadable file is replaced by the next readable one, so batches stay full.
        for attempt in range(len(self.files)):
            path = self.files[(index + attempt) % len(self.files)]
            if str(path) in self.bad:
                continue
            try:
                fitted = _fit(load_image(path), self.image_size, rng, self.small, self.crop)
            except UnreadableImageError as error:
                self._record_bad(path, str(error.__cause__ or error))
                continue
            if fitted is None:
                self._record_bad(path, f"smaller than {self.image_size}px")
                continue
            return to_tensor(fitted)
        raise UserError(f"{self.name}: no readable images left")


def _check_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")


def image_folder(
    root: str | os.PathLike,
    image_size: int = 256,
    small: str = "upscale",
    max_bad_fraction: float = 0.01,
    scan: bool = True,
    crop: str = "random",
) -> FileImages:
    """Every image under ``root`` (recursive, common extensions), sorted; the other arguments
    are :class:`FileImages`'."""
    root = Path(root).expanduser()
    _check_dir(root, "image folder")
    if not root.is_dir():
        raise NotADirectoryError(f"image folder is not a directory: {root}")
    files = list_images(root)
    if not files:
        raise ValueError(f"image folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return FileImages(files, image_size, small, max_bad_fraction, scan, str(root), crop)


def flist(
    path: str | os.PathLike,
    image_size: int = 256,
    small: str = "upscale",
    max_bad_fraction: float = 0.01,
    scan: bool = True,
    crop: str = "random",
) -> FileImages:
    """The official flist format: one image path per line; relative paths are resolved against
    the flist's folder; blank lines and ``#`` comments are ignored. The other arguments are
    :class:`FileImages`'."""
    path = Path(path).expanduser()
    _check_dir(path, "flist")
    base = path.parent
    files = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entry = Path(line).expanduser()
        files.append(entry if entry.is_absolute() else base / entry)
    if not files:
        raise ValueError(f"flist {path} lists no images")
    return FileImages(files, image_size, small, max_bad_fraction, scan, str(path), crop)


# ---------------------------------------------------------------------- embedded data
SAMPLE_SPLITS = {
    # Photographs shipped inside scikit-image (no download), split by image: every colour photo
    # (coffee and rocket held out for validation) and the greyscale ones (textures, scenes), which
    # are used as grey RGB.
    "train": (
        "astronaut",
        "chelsea",
        "colorwheel",
        "hubble_deep_field",
        "immunohistochemistry",
        "motorcycle",
        "retina",
        "brick",
        "camera",
        "cell",
        "clock",
        "coins",
        "grass",
        "gravel",
        "moon",
        "page",
        "text",
    ),
    "val": ("coffee", "rocket"),
}


def _sample_photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as (H,W,3) uint8 RGB."""
    import skimage.data

    photo = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    photo = np.asarray(photo)
    if photo.ndim == 2:
        photo = np.repeat(photo[..., None], 3, axis=2)
    return np.ascontiguousarray(photo[..., :3])


def _jitter_colour(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random per-channel gain (0.8-1.2), brightness shift (+-20) and, one time in three, a
    permutation of the channels: a few photos then cover many more colours."""
    out = array.astype(np.float32) * rng.uniform(0.8, 1.2, 3) + rng.uniform(-20, 20)
    if rng.random() < 1 / 3:
        out = out[..., rng.permutation(3)]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


class SampleImages(ImageSource):
    """The embedded default: photos shipped by scikit-image, split into train and val by image.

    Training items (``length`` per epoch) are random crops at a random scale between "shorter
    side = ``image_size``" and native, flipped at random, with optional colour jitter
    (``color_jitter``); a share ``procedural`` of them are procedural periodic textures
    (:class:`TextureImages`) instead. Evaluation items are a fixed grid of crops (at the native
    scale and at the shorter side resized to ``image_size``).
    """

    def __init__(
        self,
        split: str = "train",
        image_size: int = 256,
        length: int | None = None,
        procedural: float = 0.0,
        color_jitter: bool = False,
    ) -> None:
        if split not in SAMPLE_SPLITS:
            raise ValueError(f"sample split must be one of {sorted(SAMPLE_SPLITS)}, got {split!r}")
        if not 0 <= procedural <= 1:
            raise ValueError(f"procedural must be a share in [0, 1], got {procedural!r}")
        self.split, self.image_size = split, image_size
        self.names = SAMPLE_SPLITS[split]
        self.photos = [_sample_photo(name) for name in self.names]
        self.length = length if length is not None else (512 if split == "train" else 16)
        self.procedural, self.color_jitter = procedural, color_jitter
        self.textures = TextureImages(image_size, length=1 << 30, period=(16, 64)) if procedural else None

    def __len__(self) -> int:
        return self.length

    def get(self, index: int, rng: np.random.Generator | None) -> torch.Tensor:
        photo = self.photos[index % len(self.photos)]
        if rng is not None:
            if self.textures is not None and rng.random() < self.procedural:
                return self.textures.get(int(rng.integers(len(self.textures))), rng)
            # Random scale between "shorter side = image_size" and native, then a random crop.
            short = min(photo.shape[:2])
            target = int(rng.integers(self.image_size, max(short, self.image_size) + 1))
            if target != short:
                scale = target / short
                size = (round(photo.shape[1] * scale), round(photo.shape[0] * scale))
                photo = np.asarray(Image.fromarray(photo).resize(size, Image.BICUBIC))
            crop = _fit(photo, self.image_size, rng, "upscale")
            return to_tensor(_jitter_colour(crop, rng) if self.color_jitter else crop)
        # Deterministic crops: item k of a photo takes the k-th cell of a grid over the photo.
        k = index // len(self.photos)
        if k % 2 == 0:
            return to_tensor(_fit(photo, self.image_size, None, "upscale"))
        short = min(photo.shape[:2])
        if short < self.image_size:
            photo = _fit(photo, self.image_size, None, "upscale")
        height, width = photo.shape[:2]
        cells_y = max(1, height // self.image_size)
        cells_x = max(1, width // self.image_size)
        cell = (k // 2) % (cells_y * cells_x)
        top = min((cell // cells_x) * self.image_size, height - self.image_size)
        left = min((cell % cells_x) * self.image_size, width - self.image_size)
        return to_tensor(photo[top : top + self.image_size, left : left + self.image_size])


class TextureImages(ImageSource):
    """Procedural periodic textures: a random tile repeated over the image. A hole larger than
    the local structure can only be filled by copying from a period away, the case contextual
    attention exists for. Item ``i`` is a function of ``(seed, i)`` only."""

    def __init__(
        self,
        image_size: int = 256,
        length: int = 512,
        period: tuple[int, int] = (24, 64),
        seed: int = 0,
    ) -> None:
        self.image_size, self.length, self.period, self.seed = image_size, length, period, seed

    def __len__(self) -> int:
        return self.length

    def period_of(self, index: int) -> tuple[int, int]:
        """The (vertical, horizontal) period of item ``index`` in pixels."""
        g = np.random.default_rng([self.seed, index])
        return int(g.integers(self.period[0], self.period[1] + 1)), int(
            g.integers(self.period[0], self.period[1] + 1)
        )

    def get(self, index: int, rng: np.random.Generator | None) -> torch.Tensor:
        # The content is always seeded by (seed, index); rng only adds a random shift.
        g = np.random.default_rng([self.seed, index])
        ph = int(g.integers(self.period[0], self.period[1] + 1))
        pw = int(g.integers(self.period[0], self.period[1] + 1))
        coarse = g.uniform(0, 255, size=(max(2, ph // 6), max(2, pw // 6), 3)).astype(np.uint8)
        tile = np.asarray(Image.fromarray(coarse).resize((pw, ph), Image.BICUBIC), dtype=np.float32)
        # Sharp motifs on the smooth tile: discs and bars of random colours.
        yy, xx = np.mgrid[0:ph, 0:pw]
        for _ in range(int(g.integers(1, 4))):
            cy, cx = g.uniform(0, ph), g.uniform(0, pw)
            radius = g.uniform(2, min(ph, pw) / 3)
            tile[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = g.uniform(0, 255, 3)
        if g.random() < 0.5:
            tile[: max(1, ph // 8)] = g.uniform(0, 255, 3)
        reps = (math.ceil(self.image_size / ph) + 1, math.ceil(self.image_size / pw) + 1, 1)
        canvas = np.tile(tile, reps)
        dy = int(rng.integers(0, ph)) if rng is not None else 0
        dx = int(rng.integers(0, pw)) if rng is not None else 0
        crop = canvas[dy : dy + self.image_size, dx : dx + self.image_size]
        return to_tensor(np.clip(crop, 0, 255).astype(np.uint8))
