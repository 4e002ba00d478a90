"""``deepfill-inpaint``: fill the holes of your own images with a trained or official generator.

    deepfill-inpaint weights=places2_v1.pt input=photo.jpg mask_path=photo_mask.png
    deepfill-inpaint weights=outputs/.../checkpoints/last.ckpt input=photos/ mask_path=masks/ output=filled/
    deepfill-inpaint weights=release_places2_256/ input=cutout.png          # holes = transparent pixels

Images of any size (padded to a multiple of 8 and cropped back; known pixels are kept exactly).
A mask file marks holes with nonzero pixels (or, for a mask with an alpha channel, with its
painted, non-transparent pixels); without a mask the input's own transparent pixels are the hole.
Inputs are never overwritten.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from .config import CONFIG_DIR, register_resolvers, resolve_device
from .datasets import IMAGE_EXTENSIONS, load_image
from .models import InpaintGenerator, flow_to_image, inpaint_padded
from .models.layers import resize_nearest

__all__ = ["load_generator", "load_mask", "main", "pairs", "run"]


def load_generator(weights: str | Path, device: str | torch.device = "cpu") -> InpaintGenerator:
    """A Lightning checkpoint of training (``.ckpt``), converted official weights (``.pt``),
    an official TF checkpoint (folder or prefix) or an ``.npz`` of official variables."""
    from .module import DeepFillModule
    from .official import load_official_v1

    path = Path(weights)
    if path.suffix == ".ckpt":
        if not path.is_file():
            raise FileNotFoundError(f"weights: no such checkpoint: {path}")
        generator = DeepFillModule.generator_from_checkpoint(str(path))
    else:
        generator = load_official_v1(path)
    return generator.to(device).eval()


def load_mask(path: Path | None, image_path: Path, size: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 mask, 1 = hole, from a mask file or from the image's alpha channel."""
    if path is None:
        with Image.open(image_path) as image:
            if "A" not in image.getbands() and not (image.mode == "P" and "transparency" in image.info):
                raise ValueError(f"{image_path}: no mask given and the image has no alpha channel")
            alpha = np.asarray(image.convert("RGBA"))[..., 3]
        mask = (alpha < 128).astype(np.float32)
    else:
        with Image.open(path) as image:
            if "A" in image.getbands():
                alpha = np.asarray(image.convert("RGBA"))[..., 3]
                painted = alpha > 0
                # A painted layer (transparent background) marks holes with its paint;
                # an opaque mask marks them with nonzero pixels.
                mask = painted if not painted.all() else np.asarray(image.convert("L")) > 0
            else:
                mask = np.asarray(image.convert("L")) > 0
        mask = mask.astype(np.float32)
    if mask.shape != size:
        raise ValueError(
            f"mask {path or image_path} is {mask.shape[1]}x{mask.shape[0]} but image {image_path} "
            f"is {size[1]}x{size[0]} (width x height)"
        )
    if not mask.any():
        raise ValueError(f"mask {path or image_path} marks no hole")
    return mask


def _images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def pairs(input_path: Path, mask_path: Path | None) -> list[tuple[Path, Path | None, Path]]:
    """(image, mask or None, relative output path) for a file or a folder of images."""
    if not input_path.exists():
        raise FileNotFoundError(f"input: no such file or folder: {input_path}")
    if input_path.is_file():
        if mask_path is not None and not mask_path.is_file():
            raise FileNotFoundError(f"mask_path: no such file: {mask_path}")
        return [(input_path, mask_path, Path(input_path.stem + ".png"))]
    images = _images(input_path)
    if not images:
        raise ValueError(f"input folder {input_path} holds no images")
    if mask_path is not None and not mask_path.is_dir():
        raise NotADirectoryError(
            f"mask_path: with an input folder, mask_path must be a folder too: {mask_path}"
        )
    out = []
    for image in images:
        relative = image.relative_to(input_path)
        mask = None
        if mask_path is not None:
            candidates = [mask_path / relative.with_suffix(ext) for ext in (".png", relative.suffix)]
            mask = next((c for c in candidates if c.is_file()), None)
            if mask is None:
                raise FileNotFoundError(f"mask_path: no mask for {image} (looked for {candidates[0]})")
        out.append((image, mask, relative.with_suffix(".png")))
    return out


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1).float().div(127.5).sub(1).unsqueeze(0)


def _save(tensor: torch.Tensor, path: Path) -> None:
    array = ((tensor[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    tmp.replace(path)


def run(cfg: DictConfig) -> list[Path]:
    """Inpaint every image of ``cfg.input``; returns the written files."""
    device = resolve_device(cfg.device)
    jobs = pairs(Path(cfg.input), Path(cfg.mask_path) if cfg.get("mask_path") else None)
    output = Path(cfg.output)
    inputs = {p.resolve() for image, mask, _ in jobs for p in (image, mask) if p is not None}
    targets = [output / rel for _, _, rel in jobs]
    clash = [t for t in targets if t.resolve() in inputs]
    if clash:
        raise ValueError(f"output {clash[0]} would overwrite an input; choose another output folder")
    generator = load_generator(cfg.weights, device)
    written = []
    from rich.progress import track

    for image_path, mask_path, relative in track(jobs, description="inpainting", disable=len(jobs) < 2):
        array = load_image(image_path)
        mask = load_mask(mask_path, image_path, array.shape[:2])
        image = _to_tensor(array).to(device)
        hole = torch.from_numpy(mask)[None, None].to(device)
        x1, _, completed, offsets = inpaint_padded(generator, image, hole)
        target = output / relative
        _save(completed, target)
        written.append(target)
        if cfg.save_coarse:
            coarse = target.with_name(target.stem + "_coarse.png")
            _save(x1 * hole + image * (1 - hole), coarse)
            written.append(coarse)
        if cfg.save_flow:
            flow = resize_nearest(flow_to_image(offsets), tuple(image.shape[-2:]), align_corners=False)
            flow_path = target.with_name(target.stem + "_flow.png")
            _save(flow, flow_path)
            written.append(flow_path)
    print(f"wrote {len(jobs)} inpainted image(s) to {output}", flush=True)
    return written


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="inpaint")
def _hydra_main(cfg: DictConfig) -> None:
    from .train import run_reporting_errors

    run_reporting_errors(run, cfg, "deepfill-inpaint")


def main() -> None:
    """Console entry point."""
    register_resolvers()
    _hydra_main()


if __name__ == "__main__":
    sys.exit(main())
