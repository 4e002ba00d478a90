"""``deepfill-eval``: score a generator on fixed evaluation masks, overall and by hole size.

    deepfill-eval weights=outputs/.../checkpoints/best.ckpt data=celebahq paths.data_dir=/data
    deepfill-eval weights=places2_v1.pt data=folder data.val.root=photos/ masks_dir=eval_masks/thick

Metrics on the composited output in [0,1]: PSNR, SSIM, LPIPS (when its weights are available),
L1 and L2 inside the hole; overall and in LaMa's 10 hole-ratio bins (0-10%, ..., 90-100%).
Baselines in the same table for context: scikit-image's biharmonic inpainting and mean fill.
Writes ``metrics.csv`` and ``metrics.md`` to the output folder (and a W&B table with
``wandb=true``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from .checkpoints import check_weights_path
from .config import CONFIG_DIR, check_overrides, register_resolvers, resolve_device, wandb_has_credentials
from .errors import UserError, report_errors
from .files import writable_dir
from .masks import FolderMasks, read_mask, resize_mask
from .metrics import METRIC_NAMES, image_metrics, to_unit
from .models import composite
from .tables import write_table

__all__ = [
    "BASELINES",
    "METRICS",
    "biharmonic_fill",
    "compare_with_baselines",
    "comparison_lines",
    "dataset_batches",
    "evaluate",
    "main",
    "mean_fill",
    "per_image_metrics",
    "summarise",
]

METRICS = METRIC_NAMES
BINS = np.linspace(0.0, 1.0, 11)

Method = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mean_fill(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fill each hole with the mean colour of the image's known pixels."""
    known = 1 - mask
    mean = (image * known).sum(dim=(2, 3), keepdim=True) / known.sum(dim=(2, 3), keepdim=True).clamp_min(1)
    return image * known + mean * mask


def biharmonic_fill(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """scikit-image's biharmonic inpainting, image by image."""
    from skimage.restoration import inpaint_biharmonic

    out = []
    for img, m in zip(image, mask, strict=True):
        array = ((img.permute(1, 2, 0).cpu().numpy() + 1) / 2).astype(np.float64)
        filled = inpaint_biharmonic(array, m[0].cpu().numpy().astype(bool), channel_axis=-1)
        out.append(torch.from_numpy(filled).permute(2, 0, 1).float() * 2 - 1)
    return torch.stack(out).to(image.device)


BASELINES: dict[str, Method] = {"biharmonic": biharmonic_fill, "mean_fill": mean_fill}


def per_image_metrics(
    completed: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, lpips_net: torch.nn.Module | None
) -> dict[str, torch.Tensor]:
    """Per-image metrics (N,) of composited images in [-1,1]: :func:`deepfill.metrics.image_metrics`,
    the definition validation uses too."""
    values = image_metrics(to_unit(completed), to_unit(target), mask, lpips_net)
    return {k: v.cpu() for k, v in values.items()}


def evaluate(
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    methods: dict[str, Method],
    lpips_net: torch.nn.Module | None = None,
) -> list[dict]:
    """Run every method on every batch; returns one record per (method, image)."""
    records = []
    for image, mask in batches:
        ratios = mask.float().mean(dim=(1, 2, 3)).cpu()
        for name, method in methods.items():
            with torch.no_grad():
                output = method(image, mask)
            completed = composite(output, image, mask)
            values = per_image_metrics(completed, image, mask, lpips_net)
            for i in range(image.shape[0]):
                record = {"method": name, "hole_ratio": float(ratios[i])}
                record |= {k: float(v[i]) for k, v in values.items()}
                records.append(record)
    return records


def summarise(records: list[dict]) -> list[dict]:
    """Mean of every metric per method, overall and per hole-ratio bin (LaMa's 10 bins)."""
    rows = []
    methods = list(dict.fromkeys(r["method"] for r in records))
    for method in methods:
        mine = [r for r in records if r["method"] == method]
        groups = [("all", mine)]
        for lo, hi in pairwise(BINS):
            members = [
                r for r in mine if lo <= r["hole_ratio"] < hi or (hi == 1.0 and r["hole_ratio"] == 1.0)
            ]
            if members:
                groups.append((f"{int(lo * 100)}-{int(hi * 100)}%", members))
        for name, members in groups:
            row = {"method": method, "hole_ratio": name, "images": len(members)}
            for metric in METRICS:
                present = [m[metric] for m in members if metric in m]
                if present:
                    row[metric] = float(np.mean(present))
            rows.append(row)
    return rows


def _write_tables(rows: list[dict], out_dir: Path) -> tuple[Path, Path]:
    columns = ["method", "hole_ratio", "images", *[m for m in METRICS if any(m in r for r in rows)]]
    return write_table(rows, columns, out_dir / "metrics.csv", out_dir / "metrics.md")


def _mask_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UserError(f"masks_dir: no such folder: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in FolderMasks.EXTENSIONS)
    if not files:
        raise ValueError(f"masks_dir {folder} holds no mask images")
    return files


def _item_count(dataset, limit: int | None) -> int:
    if limit is None:
        return len(dataset)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise UserError(f"limit: must be a positive number of images or null for all, got {limit!r}")
    return min(limit, len(dataset))


def _file_mask(path: Path, height: int, width: int) -> np.ndarray:
    mask = resize_mask(read_mask(path), height, width)
    if not mask.any():
        raise UserError(f"masks_dir: {path} marks no hole at {width}x{height}; every mask needs a hole")
    return mask


def dataset_batches(
    dataset,
    limit: int | None,
    batch_size: int,
    device: str | torch.device,
    mask_files: list[Path] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(image, mask)`` batches of the first ``limit`` items of an evaluation dataset (all when
    None): each item's fixed mask, or with ``mask_files`` item i gets file i.

    The limit and the mask files (enough of them, readable, each with a hole) are checked when
    this is called, before the first batch is made."""
    limit = _item_count(dataset, limit)
    if mask_files is not None:
        if len(mask_files) < limit:
            raise UserError(
                f"masks_dir: {len(mask_files)} mask file(s) for {limit} images (item i gets file i); "
                f"write at least {limit} (deepfill-make-masks --count {limit}) or set "
                f"limit={len(mask_files)}"
            )
        for path in mask_files[:limit]:
            if not read_mask(path).any():
                raise UserError(f"masks_dir: {path} marks no hole; every mask needs a hole")
    return _batches_of(dataset, limit, batch_size, device, mask_files)


def _batches_of(dataset, limit: int, size: int, device, mask_files) -> Iterator:
    for start in range(0, limit, size):
        items = [dataset[i] for i in range(start, min(start + size, limit))]
        image = torch.stack([it["image"] for it in items])
        if mask_files is None:
            mask = torch.stack([it["mask"] for it in items])
        else:  # item i gets mask file i: a fixed set shared across methods and papers
            h, w = image.shape[-2:]
            arrays = [_file_mask(mask_files[i], h, w) for i in range(start, start + len(items))]
            mask = torch.from_numpy(np.stack(arrays)).unsqueeze(1)
        yield image.to(device), mask.to(device)


def _batches(cfg: DictConfig, device: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    datamodule = instantiate(cfg.data)
    datamodule.setup("validate")
    dataset = datamodule.datasets.get("val")
    if dataset is None:
        raise UserError("data: the evaluation needs a val source (data.val)")
    mask_files = _mask_files(Path(cfg.masks_dir)) if cfg.get("masks_dir") else None
    if isinstance(cfg.batch_size, bool) or not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise UserError(f"batch_size: must be a positive integer, got {cfg.batch_size!r}")
    return dataset_batches(dataset, cfg.limit, cfg.batch_size, device, mask_files)


def _methods(generator: torch.nn.Module, baselines) -> dict[str, Method]:
    methods: dict[str, Method] = {"deepfill": lambda image, mask: generator(image, mask)[1]}
    for name in baselines or []:
        if name not in BASELINES:
            raise UserError(f"baselines: unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
        methods[name] = BASELINES[name]
    return methods


def compare_with_baselines(
    generator: torch.nn.Module,
    dataset,
    limit: int | None = 64,
    batch_size: int = 8,
    baselines=tuple(BASELINES),
    device: str | torch.device = "cpu",
) -> list[dict]:
    """The generator and the baselines on the first ``limit`` items of an evaluation dataset,
    with their fixed masks: one summary row per method (all images), as ``deepfill-eval``."""
    was_training = generator.training
    generator.eval()
    try:
        batches = dataset_batches(dataset, limit, batch_size, device)
        rows = summarise(evaluate(batches, _methods(generator, baselines)))
    finally:
        generator.train(was_training)
    return [row for row in rows if row["hole_ratio"] == "all"]


def comparison_lines(rows: list[dict]) -> list[str]:
    """One line per method: PSNR, SSIM and L1 in the hole (images in [0,1])."""
    return [
        f"{row['method']:<11s} PSNR {row['psnr']:6.2f} dB   SSIM {row['ssim']:.3f}   "
        f"L1 in the hole {row['l1_hole']:.4f}   ({row['images']} images)"
        for row in rows
    ]


def run(cfg: DictConfig) -> list[dict]:
    """Evaluate ``cfg.weights`` and the baselines; writes the tables; returns the summary rows."""
    from .inpaint import load_generator
    from .metrics import InpaintingMetrics

    device = resolve_device(cfg.device)
    # Everything a user can get wrong is checked before the model loads.
    check_weights_path(cfg.weights)
    writable_dir(cfg.output, "output")
    _methods(torch.nn.Identity(), cfg.baselines)
    batches = _batches(cfg, device)
    generator = load_generator(cfg.weights, device)
    methods = _methods(generator, cfg.baselines)
    metrics = InpaintingMetrics(lpips=cfg.lpips, lpips_required=cfg.lpips_required)
    lpips_net = metrics.lpips.net.to(device) if metrics.lpips is not None else None
    records = evaluate(batches, methods, lpips_net)
    rows = summarise(records)
    csv_path, md_path = _write_tables(rows, Path(cfg.output))
    if cfg.wandb:
        import wandb

        mode = "online" if wandb_has_credentials() else "offline"
        run_ = wandb.init(project=cfg.wandb_project, dir=str(Path(cfg.output)), mode=mode, job_type="eval")
        columns = list(rows[0])
        run_.log(
            {"eval/metrics": wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])}
        )
        run_.finish()
    print(md_path.read_text(), flush=True)
    print(f"tables written to {csv_path} and {md_path}", flush=True)
    return rows


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    report_errors("deepfill-eval", run, cfg)


def main() -> None:
    """Console entry point."""
    register_resolvers()
    check_overrides("eval", "deepfill-eval")
    _hydra_main()


if __name__ == "__main__":
    sys.exit(main())
