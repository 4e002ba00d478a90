"""Hole masks for training and evaluation.

Every generator is a pure function ``(height, width, rng, **params) -> (1,H,W) float32 tensor``,
1 = hole, drawn only from ``rng`` (a ``numpy.random.Generator``). Configs bind the parameters
with ``functools.partial`` (Hydra: ``_partial_: true``), so a bound generator is again a
function of ``(height, width, rng)``.

* :func:`rectangle` — the official v1 box (128x128 at 256^2, each side shrunk by up to 16 px);
  :func:`centered_rectangle` its evaluation form.
* :func:`free_form` — the v2 brush strokes.
* :func:`thin`, :func:`medium`, :func:`thick` — LaMa's evaluation presets, at any size.
* :func:`small`, :func:`large` — CoModGAN's free-form masks in MAT's two evaluation sizes.
* :func:`mixed` — a weighted choice among generators, or their union (v2: box OR strokes).
* :class:`FolderMasks` — mask images from a folder (e.g. the NVIDIA irregular mask set).
* :func:`read_mask` — a mask image file as a hole map, by the one convention every command
  uses: a pixel is hole when its value is >= 128 of 255 (:data:`HOLE_THRESHOLD`); for an image
  with transparent pixels (a painted layer), when its alpha is >= 128.
* :func:`bounded` — resample until the hole ratio is within bounds; never an empty mask.
* :func:`eval_mask` — the deterministic mask of item ``i``: a function of ``(seed, i)`` only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from deepfill.utils.errors import UnreadableImageError, UserError
from deepfill.utils.files import atomic_path, writable_dir

if TYPE_CHECKING:
    import torch

__all__ = [
    "HOLE_THRESHOLD",
    "PRESETS",
    "PROTOCOLS",
    "FolderMasks",
    "MaskGenerator",
    "bounded",
    "centered_rectangle",
    "comodgan",
    "eval_mask",
    "free_form",
    "hole_distance",
    "hole_ratio",
    "irregular",
    "large",
    "mask_for_image",
    "medium",
    "mixed",
    "read_mask",
    "rectangle",
    "resize_mask",
    "small",
    "thick",
    "thin",
    "write_eval_set",
]

# Masks are drawn with NumPy and Pillow and handed over as tensors; PyTorch is imported where a
# tensor is made, so that ``deepfill-make-masks --help`` and the mask-file checks of the commands
# answer before it loads.
MaskGenerator = Callable[[int, int, np.random.Generator], "torch.Tensor"]

# The sizes of the official v1 box and of LaMa's presets are given for 256x256 images; at other
# sizes they scale with the shorter side.
_REFERENCE_SIDE = 256


def _to_tensor(mask: np.ndarray) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)).unsqueeze(0)


def hole_ratio(mask: torch.Tensor) -> float:
    """Fraction of hole pixels of a ``(1,H,W)`` or ``(N,1,H,W)`` mask."""
    return float(mask.float().mean())


# ---------------------------------------------------------------------- rectangles
def rectangle(
    height: int,
    width: int,
    rng: np.random.Generator,
    box: tuple[int, int] | None = None,
    margin: tuple[int, int] = (0, 0),
    max_delta: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Official v1 box: a ``box`` (default half the image side: 128x128 at 256^2) placed
    uniformly with top/left in ``[margin, size - margin - box)``, then each side shrunk by
    ``randint(0, max_delta // 2)`` (default ``max_delta = box // 4``: 32 at 256^2), which gives
    holes of 96..128 px per side at 256^2.
    """
    box_h, box_w = box if box is not None else (height // 2, width // 2)
    delta_h, delta_w = max_delta if max_delta is not None else (box_h // 4, box_w // 4)
    margin_h, margin_w = margin
    if box_h + 2 * margin_h > height or box_w + 2 * margin_w > width:
        raise ValueError(f"rectangle: box {box_h}x{box_w} with margin {margin} does not fit {height}x{width}")
    top = int(rng.integers(margin_h, max(height - margin_h - box_h, margin_h + 1)))
    left = int(rng.integers(margin_w, max(width - margin_w - box_w, margin_w + 1)))
    shrink_h = int(rng.integers(0, delta_h // 2 + 1))
    shrink_w = int(rng.integers(0, delta_w // 2 + 1))
    mask = np.zeros((height, width), np.float32)
    mask[top + shrink_h : top + box_h - shrink_h, left + shrink_w : left + box_w - shrink_w] = 1
    return _to_tensor(mask)


def centered_rectangle(
    height: int, width: int, rng: np.random.Generator | None = None, box: tuple[int, int] | None = None
) -> torch.Tensor:
    """Evaluation form of the v1 box: a centred ``box`` (default half the side: 128x128 at 256^2)."""
    box_h, box_w = box if box is not None else (height // 2, width // 2)
    top, left = (height - box_h) // 2, (width - box_w) // 2
    mask = np.zeros((height, width), np.float32)
    mask[top : top + box_h, left : left + box_w] = 1
    return _to_tensor(mask)


# ---------------------------------------------------------------------- strokes
def _stroke(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], width: int) -> None:
    """A polyline of the given width with round joints and caps."""
    draw.line(points, fill=1, width=width)
    radius = width / 2
    for x, y in points:
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=1)


def free_form(
    height: int,
    width: int,
    rng: np.random.Generator,
    strokes: tuple[int, int] = (1, 3),
    vertices: tuple[int, int] = (4, 11),
    mean_angle: float = 2 * math.pi / 5,
    angle_range: float = 2 * math.pi / 15,
    stroke_width: tuple[float, float] = (12, 40),
    flip: bool = True,
) -> torch.Tensor:
    """DeepFill v2 brush strokes: 1-3 strokes of 4-11 vertices; turning angles around 2*pi/5
    (+- up to 2*pi/15, alternating direction); segment lengths ~ N(r, r/2) clipped to [0, 2r]
    with r = sqrt(H^2+W^2)/8; widths U(12, 40) px; round joints.
    """
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    radius = math.hypot(height, width) / 8
    for _ in range(int(rng.integers(strokes[0], strokes[1] + 1))):
        count = int(rng.integers(vertices[0], vertices[1] + 1))
        low = mean_angle - rng.uniform(0, angle_range)
        high = mean_angle + rng.uniform(0, angle_range)
        x, y = float(rng.integers(0, width)), float(rng.integers(0, height))
        points = [(x, y)]
        for i in range(count):
            angle = rng.uniform(low, high)
            angle = 2 * math.pi - angle if i % 2 == 0 else angle
            length = float(np.clip(rng.normal(radius, radius / 2), 0, 2 * radius))
            x = float(np.clip(x + length * math.cos(angle), 0, width - 1))
            y = float(np.clip(y + length * math.sin(angle), 0, height - 1))
            points.append((x, y))
        _stroke(draw, points, max(1, int(rng.uniform(*stroke_width))))
    mask = np.asarray(canvas, dtype=np.float32)
    if flip and rng.random() < 0.5:
        mask = mask[:, ::-1]
    if flip and rng.random() < 0.5:
        mask = mask[::-1]
    return _to_tensor(mask)


def irregular(
    height: int,
    width: int,
    rng: np.random.Generator,
    strokes: tuple[int, int] = (4, 5),
    max_width: int = 50,
    max_length: int = 100,
    max_angle: int = 4,
    boxes: tuple[int, int] = (0, 0),
    box_size: tuple[int, int] = (10, 50),
    box_margin: int = 10,
) -> torch.Tensor:
    """LaMa-style irregular mask: ``strokes`` polylines of 1-5 segments (random direction,
    length <= ``max_length``, width <= ``max_width``) plus ``boxes`` rectangles with sides in
    ``box_size``. Sizes are for 256^2 and scale with the shorter image side.
    """
    scale = min(height, width) / _REFERENCE_SIDE
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(strokes[0], strokes[1] + 1))):
        x, y = float(rng.integers(0, width)), float(rng.integers(0, height))
        points = [(x, y)]
        stroke_w = max(1, round((5 + rng.integers(0, max(max_width - 5, 1))) * scale))
        for _ in range(1 + int(rng.integers(0, 5))):
            angle = 0.01 + rng.uniform(0, max_angle)
            length = (10 + rng.integers(0, max(max_length - 10, 1))) * scale
            x = float(np.clip(x + length * math.sin(angle), 0, width - 1))
            y = float(np.clip(y + length * math.cos(angle), 0, height - 1))
            points.append((x, y))
        _stroke(draw, points, stroke_w)
    mask = np.asarray(canvas, dtype=np.float32).copy()
    margin = int(box_margin * scale)
    for _ in range(int(rng.integers(boxes[0], boxes[1] + 1))):
        lo, hi = int(box_size[0] * scale), int(box_size[1] * scale)
        box_w = int(rng.integers(lo, hi + 1))
        box_h = int(rng.integers(lo, hi + 1))
        left = int(rng.integers(margin, max(width - margin - box_w, margin + 1)))
        top = int(rng.integers(margin, max(height - margin - box_h, margin + 1)))
        mask[top : top + box_h, left : left + box_w] = 1
    return _to_tensor(mask)


# LaMa drops evaluation masks that cover more than half of the image.
_LAMA_MAX_RATIO = 0.5


def thin(height: int, width: int, rng: np.random.Generator) -> torch.Tensor:
    """LaMa 'thin': 4-50 thin strokes (width <= 10, length <= 40); hole ratio <= 50%."""

    def draw(h: int, w: int, r: np.random.Generator) -> torch.Tensor:
        return irregular(h, w, r, strokes=(4, 50), max_width=10, max_length=40)

    return bounded(height, width, rng, draw, max_ratio=_LAMA_MAX_RATIO)


def medium(height: int, width: int, rng: np.random.Generator) -> torch.Tensor:
    """LaMa 'medium': 4-5 strokes (width <= 50, length <= 100) plus 0-3 boxes of 10-50 px."""

    def draw(h: int, w: int, r: np.random.Generator) -> torch.Tensor:
        return irregular(
            h, w, r, strokes=(4, 5), max_width=50, max_length=100, boxes=(0, 3), box_size=(10, 50)
        )

    return bounded(height, width, rng, draw, max_ratio=_LAMA_MAX_RATIO)


def thick(height: int, width: int, rng: np.random.Generator) -> torch.Tensor:
    """LaMa 'thick': 1-5 strokes (width <= 100, length <= 200) plus 0-3 boxes of 30-150 px."""

    def draw(h: int, w: int, r: np.random.Generator) -> torch.Tensor:
        return irregular(
            h, w, r, strokes=(1, 5), max_width=100, max_length=200, boxes=(0, 3), box_size=(30, 150)
        )

    return bounded(height, width, rng, draw, max_ratio=_LAMA_MAX_RATIO)


def comodgan(
    height: int,
    width: int,
    rng: np.random.Generator,
    half_boxes: int = 5,
    full_boxes: int = 3,
    brushes: int = 9,
    stroke_width: tuple[float, float] = (12, 48),
) -> torch.Tensor:
    """CoModGAN's free-form masks (Zhao et al. ICLR 2021), as MAT evaluates with them: up to
    ``half_boxes - 1`` boxes of sides below half the image, up to ``full_boxes - 1`` of sides below
    the whole image (each may reach half its size past the border), and up to ``brushes - 1``
    v2-style brush strokes of 4-17 vertices and ``stroke_width`` px; redrawn until neither
    empty nor full."""
    while True:
        mask = np.zeros((height, width), np.float32)
        for count, (limit_h, limit_w) in (
            (half_boxes, (height // 2, width // 2)),
            (full_boxes, (height, width)),
        ):
            for _ in range(int(rng.integers(count))):
                box_h, box_w = int(rng.integers(max(limit_h, 1))), int(rng.integers(max(limit_w, 1)))
                top = int(rng.integers(-(box_h // 2), height - box_h + box_h // 2))
                left = int(rng.integers(-(box_w // 2), width - box_w + box_w // 2))
                mask[max(top, 0) : max(top + box_h, 0), max(left, 0) : max(left + box_w, 0)] = 1
        strokes = free_form(
            height, width, rng, strokes=(0, brushes - 1), vertices=(4, 17), stroke_width=stroke_width
        )[0].numpy()
        mask = np.maximum(mask, strokes)
        if 0.0 < mask.mean() < 1.0:
            return _to_tensor(mask)


def _mat_counts(height: int, width: int, large: bool) -> tuple[int, int, int]:
    # MAT's generators: one for 256^2, one for 512^2; the nearer one by the shorter side.
    if min(height, width) < 384:
        return (4, 2, 8) if large else (2, 2, 3)
    return (5, 3, 9) if large else (3, 2, 4)


def small(height: int, width: int, rng: np.random.Generator) -> torch.Tensor:
    """MAT's 'small' free-form masks (:func:`comodgan` with fewer boxes and strokes)."""
    return comodgan(height, width, rng, *_mat_counts(height, width, large=False))


def large(height: int, width: int, rng: np.random.Generator) -> torch.Tensor:
    """MAT's 'large' free-form masks (:func:`comodgan`)."""
    return comodgan(height, width, rng, *_mat_counts(height, width, large=True))


# ---------------------------------------------------------------------- combinators
def mixed(
    height: int,
    width: int,
    rng: np.random.Generator,
    generators: Sequence[MaskGenerator],
    weights: Sequence[float] | None = None,
    union: bool = False,
) -> torch.Tensor:
    """A weighted choice among ``generators``; with ``union=True`` the union of all of them
    (DeepFill v2 trains on box OR strokes)."""
    if not generators:
        raise ValueError("mixed: needs at least one generator")
    if union:
        import torch

        mask = generators[0](height, width, rng)
        for generator in generators[1:]:
            mask = torch.maximum(mask, generator(height, width, rng))
        return mask
    p = np.asarray(weights if weights is not None else [1.0] * len(generators), dtype=np.float64)
    if p.shape != (len(generators),) or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"mixed: weights must be {len(generators)} non-negative numbers, got {weights!r}")
    choice = int(rng.choice(len(generators), p=p / p.sum()))
    return generators[choice](height, width, rng)


def bounded(
    height: int,
    width: int,
    rng: np.random.Generator,
    generator: MaskGenerator,
    min_ratio: float = 0.0,
    max_ratio: float = 1.0,
    max_tries: int = 100,
) -> torch.Tensor:
    """Draw from ``generator`` until the hole ratio is in ``[min_ratio, max_ratio]`` and the
    mask is not empty. After ``max_tries`` the non-empty draw closest to the bounds is returned;
    if every draw was empty, a centred box covering the bounds' middle ratio is."""
    if not 0 <= min_ratio <= max_ratio <= 1:
        raise ValueError(f"bounded: need 0 <= min_ratio <= max_ratio <= 1, got {min_ratio}, {max_ratio}")
    best, best_distance = None, math.inf
    for _ in range(max_tries):
        mask = generator(height, width, rng)
        ratio = hole_ratio(mask)
        if ratio == 0:
            continue
        distance = max(min_ratio - ratio, ratio - max_ratio, 0.0)
        if distance == 0:
            return mask
        if distance < best_distance:
            best, best_distance = mask, distance
    if best is not None:
        return best
    side = math.sqrt(max((min_ratio + max_ratio) / 2, 1.0 / (height * width)))
    box = (max(1, round(height * side)), max(1, round(width * side)))
    return centered_rectangle(height, width, box=box)


# Smallest side the mask generators are made for (stroke widths, box margins).
MIN_MASK_SIDE = 16

# One convention for every mask file (inpaint, eval's masks_dir, training folders): hole where
# the 8-bit value is >= 128, so a mask saved as JPEG or with anti-aliased edges means the same
# hole everywhere.
HOLE_THRESHOLD = 128
# Share of the pixels in the middle grey band past which a mask is reported as not binary.
_GREY_BAND = (64, 191)
_MAX_GREY_SHARE = 0.05


def _binarise(values: np.ndarray, source: str) -> np.ndarray:
    grey = float(np.mean((values >= _GREY_BAND[0]) & (values <= _GREY_BAND[1])))
    if grey > _MAX_GREY_SHARE:
        warnings.warn(
            f"mask {source} is not binary: {grey:.0%} of its pixels are grey ({_GREY_BAND[0]}-"
            f"{_GREY_BAND[1]}); pixels >= {HOLE_THRESHOLD} are taken as hole",
            UserWarning,
            stacklevel=3,
        )
    return values >= HOLE_THRESHOLD


def hole_distance(mask: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(1,H,W) float32 chessboard distance of every hole pixel to the nearest known pixel (1 next
    to the boundary; 0 on known pixels); the image border is not a known pixel. For a mask with
    no known pixel, ``max(H, W) + 1`` everywhere (its discount weights then vanish).
    mask: (1,H,W) or (H,W), 1 = hole."""
    from scipy.ndimage import distance_transform_cdt

    array = np.asarray(mask, dtype=np.float32).reshape(np.shape(mask)[-2:]) > 0.5
    if array.all():
        distance = np.full(array.shape, max(array.shape) + 1, dtype=np.float32)
    else:
        distance = distance_transform_cdt(array, metric="chessboard").astype(np.float32)
    return _to_tensor(distance)


def _has_alpha(image: Image.Image) -> bool:
    return "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info)


def read_mask(path: str | Path, invert: bool = False) -> np.ndarray:
    """(H, W) bool hole map of a mask image file (True = hole).

    A pixel is hole when its grey value is >= 128 (:data:`HOLE_THRESHOLD`); for a mask with
    transparent pixels (a layer painted over a transparent background) when its alpha is >= 128.
    ``invert`` swaps hole and known (for mask sets that mark the hole black). Warns when the
    mask is not (nearly) binary; raises :class:`~deepfill.utils.errors.UnreadableImageError` for a file
    that is not an image."""
    try:
        with Image.open(path) as image:
            alpha = np.asarray(image.convert("RGBA"))[..., 3] if _has_alpha(image) else None
            values = alpha if alpha is not None and (alpha < 255).any() else np.asarray(image.convert("L"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(f"{path}: not a readable mask image ({error})") from error
    hole = _binarise(values, str(path))
    return ~hole if invert else hole


def mask_for_image(path: Path | None, image_path: Path, size: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 mask, 1 = hole, of the image ``image_path`` of ``size`` (H, W): from the
    mask file ``path`` (:func:`read_mask`) or, when it is None, from the image's own transparent
    pixels (alpha < 128). Raises :class:`UserError` when the sizes differ or there is no hole."""
    if path is None:
        with Image.open(image_path) as image:
            if not _has_alpha(image):
                raise UserError(
                    f"{image_path}: no mask given (mask_path=) and the image has no alpha channel"
                )
            alpha = np.asarray(image.convert("RGBA"))[..., 3]
        mask = alpha < HOLE_THRESHOLD
    else:
        mask = read_mask(path)
    if mask.shape != size:
        raise UserError(
            f"mask {path or image_path} is {mask.shape[1]}x{mask.shape[0]} but image {image_path} "
            f"is {size[1]}x{size[0]} (width x height)"
        )
    if not mask.any():
        raise UserError(f"mask {path or image_path} marks no hole")
    return mask.astype(np.float32)


def resize_mask(hole: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) bool hole map -> (height, width) float32, nearest neighbour (stays binary)."""
    if hole.shape == (height, width):
        return hole.astype(np.float32)
    resized = Image.fromarray(hole.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)
    return (np.asarray(resized) >= HOLE_THRESHOLD).astype(np.float32)


class FolderMasks:
    """Masks from image files (any size), read by :func:`read_mask` (``invert`` for sets where
    black marks the hole), resized with nearest, optionally flipped and rotated by multiples of 90
    degrees. ``__call__(height, width, rng)`` picks a file with ``rng``.
    """

    EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

    def __init__(
        self,
        folder: str | Path,
        invert: bool = False,
        flip: bool = True,
        rotate: bool = True,
    ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"mask folder not found: {self.folder}")
        self.files = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in self.EXTENSIONS)
        if not self.files:
            raise ValueError(f"mask folder {self.folder} holds no mask images ({', '.join(self.EXTENSIONS)})")
        self.invert, self.flip, self.rotate = invert, flip, rotate

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int, height: int, width: int) -> np.ndarray:
        return resize_mask(read_mask(self.files[index], self.invert), height, width)

    def __call__(self, height: int, width: int, rng: np.random.Generator) -> torch.Tensor:
        index = int(rng.integers(0, len(self.files)))
        turns = int(rng.integers(0, 4)) if self.rotate else 0
        # Rotate before resizing so that non-square targets keep the mask's aspect.
        h, w = (width, height) if turns % 2 else (height, width)
        mask = np.rot90(self.load(index, h, w), turns)
        if self.flip and rng.random() < 0.5:
            mask = mask[:, ::-1]
        return _to_tensor(mask)


PRESETS: dict[str, MaskGenerator] = {
    "rect_v1": rectangle,
    "rect_center": centered_rectangle,
    "free_form_v2": free_form,
    "thin": thin,
    "medium": medium,
    "thick": thick,
    "small": small,
    "large": large,
    "box": centered_rectangle,
    "strokes": free_form,
}
# The evaluation protocols of the field's tables, by the names they are reported under: LaMa's
# thin/medium/thick, CoModGAN's and MAT's small/large, the official v1 centred box and DeepFill
# v2's brush strokes. Each is a preset too (deepfill-make-masks --preset).
PROTOCOLS = ("thin", "medium", "thick", "small", "large", "box", "strokes")


def eval_mask(generator: MaskGenerator, seed: int, index: int, height: int, width: int) -> torch.Tensor:
    """The evaluation mask of item ``index``: a function of ``(seed, index)`` only, identical
    across runs, worker counts and DDP ranks."""
    return generator(height, width, np.random.default_rng([seed, index]))


def write_eval_set(
    out_dir: str | Path, preset: str, count: int, height: int, width: int, seed: int = 0
) -> list[Path]:
    """Write the fixed evaluation masks ``0..count-1`` of ``preset`` as PNG files (255 = hole)
    plus a ``masks.json`` that records how they were made. Existing files are overwritten only
    by identical content, since mask ``i`` depends on ``(preset, seed, i)`` alone."""
    import json

    if preset not in PRESETS:
        raise UserError(f"unknown mask preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if count < 1:
        raise UserError(f"count must be >= 1, got {count!r}")
    if min(height, width) < MIN_MASK_SIDE:
        raise UserError(f"size must be at least {MIN_MASK_SIDE}x{MIN_MASK_SIDE}, got {height}x{width}")
    out = writable_dir(out_dir, "out")
    paths = []
    for index in range(count):
        mask = eval_mask(PRESETS[preset], seed, index, height, width)[0].numpy()
        path = out / f"{index:06d}.png"
        with atomic_path(path) as tmp:
            Image.fromarray((mask * 255).astype(np.uint8)).save(tmp, format="PNG")
        paths.append(path)
    manifest = {"preset": preset, "seed": seed, "count": count, "height": height, "width": width}
    with atomic_path(out / "masks.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    return paths
