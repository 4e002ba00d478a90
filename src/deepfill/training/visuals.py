"""Image grids for logging: input with hole, coarse, refined, composite, ground truth, flow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepfill.models.flow import flow_to_image
from deepfill.models.generator import composite
from deepfill.models.layers import resize_nearest
from deepfill.utils.files import atomic_path
from deepfill.utils.images import to_uint8

__all__ = ["COLUMNS", "comparison_grid", "inpainting_grid", "log_grid"]

COLUMNS = ("input", "coarse", "refined", "composite", "ground truth", "attention flow")


def inpainting_grid(
    image: torch.Tensor,
    mask: torch.Tensor,
    x_stage1: torch.Tensor,
    x_stage2: torch.Tensor,
    offsets: torch.Tensor,
    completed: torch.Tensor | None = None,
    max_rows: int = 4,
) -> np.ndarray:
    """One row per sample, columns :data:`COLUMNS`. Inputs as the generator's, ``completed`` the
    composite ``x2*mask + image*(1-mask)`` when already made; (H', W', 3) uint8."""
    n = min(max_rows, image.shape[0])
    image, mask = image[:n].float(), mask[:n].float().expand(n, 1, *image.shape[-2:])
    x1, x2 = x_stage1[:n].float(), x_stage2[:n].float()
    holed = image * (1 - mask) + mask  # hole shown white
    completed = composite(x2, image, mask) if completed is None else completed[:n].float()
    flow = resize_nearest(flow_to_image(offsets[:n]), tuple(image.shape[-2:]), align_corners=False)
    columns = [holed, x1, x2, completed, image, flow.to(image.device)]
    rows = torch.cat([torch.cat(list(col), dim=-1) for col in zip(*columns, strict=True)], dim=-2)
    return to_uint8(rows)


def comparison_grid(
    image: torch.Tensor, mask: torch.Tensor, outputs: dict[str, torch.Tensor], offsets: torch.Tensor
) -> tuple[np.ndarray, list[str]]:
    """One row per sample: the input with its hole (white), each method's completed image, the
    attention flow (``offsets`` of one of them) and the ground truth.

    image: (N,3,H,W) in [-1,1]; mask: (N or 1,1,H,W), 1 = hole; outputs: name -> (N,3,H,W)
    raw outputs (composited here). Returns the (H', W', 3) uint8 grid and its column titles.
    """
    image, mask = image.float(), mask.float().expand(image.shape[0], 1, *image.shape[-2:])
    flow = resize_nearest(flow_to_image(offsets), tuple(image.shape[-2:]), align_corners=False)
    columns = [image * (1 - mask) + mask]
    columns += [composite(out.float(), image, mask) for out in outputs.values()]
    columns += [flow.to(image.device), image]
    rows = torch.cat([torch.cat(list(col), dim=-1) for col in zip(*columns, strict=True)], dim=-2)
    grid = to_uint8(rows)
    return grid, ["input", *outputs, "attention flow", "ground truth"]


def log_grid(trainer, key: str, grid: np.ndarray, caption: str, step: int) -> None:
    """Send a grid to every logger that takes images (W&B, TensorBoard) and save it as a PNG in
    the run's log folder, so CSV-only runs keep their pictures too."""
    from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

    saved = False
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[grid], caption=[caption], step=step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, grid, global_step=step, dataformats="HWC")
        if not saved and getattr(logger, "log_dir", None):
            folder = Path(logger.log_dir) / "images"
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(folder / f"{key.replace('/', '_')}_{step:07d}.png") as tmp:
                Image.fromarray(grid).save(tmp, format="PNG")
            saved = True
