"""Scoring inpainting: DeepFill and the classical baselines on fixed evaluation masks, per image,
overall and by hole size.

Metrics on the composited output in [0,1]: PSNR, SSIM, LPIPS (when its weights are available),
L1 and L2 inside the hole; overall and in LaMa's 10 hole-ratio bins (0-10%, ..., 90-100%); and,
with the Inception network, the set metrics FID, KID, P-IDS and U-IDS
(:mod:`deepfill.evaluation.realism`), overall and in the bins that hold enough images.
Baselines for context: scikit-image's biharmonic inpainting and mean fill. ``deepfill-eval``
(:mod:`deepfill.cli.eval`) and every training run's final comparison use these functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch

from deepfill.data.masks import FolderMasks, MaskGenerator, eval_mask, read_mask, resize_mask
from deepfill.evaluation.contact_sheet import ContactSheet
from deepfill.evaluation.metrics import METRIC_NAMES, METRICS, image_metrics, network_free_metrics
from deepfill.evaluation.realism import REALISM_METRICS, RealismFeatures
from deepfill.evaluation.tables import markdown_table, write_csv, write_table
from deepfill.models import composite
from deepfill.utils.errors import UserError
from deepfill.utils.files import atomic_path
from deepfill.utils.images import to_unit

__all__ = [
    "BASELINES",
    "MIN_REALISM_IMAGES",
    "add_realism",
    "biharmonic_fill",
    "compare_with_baselines",
    "comparison_lines",
    "comparison_verdict",
    "dataset_batches",
    "evaluate",
    "mask_files",
    "mean_fill",
    "methods_with_baselines",
    "per_image_metrics",
    "summarise",
    "write_baseline_comparison",
    "write_protocol_tables",
    "write_tables",
]

BINS = np.linspace(0.0, 1.0, 11)
# The set metrics of a hole-ratio bin are computed when it holds at least this many images:
# below, FID's covariances and the SVM of P-IDS/U-IDS say more about the set size than the fill.
MIN_REALISM_IMAGES = 50
# LaMa's bins by name ("10-20%"): [lo, hi), the last one with 100% itself.
_BIN_EDGES = {f"{int(lo * 100)}-{int(hi * 100)}%": (lo, hi) for lo, hi in pairwise(BINS)}


def _in_bin(ratio: float, lo: float, hi: float) -> bool:
    return lo <= ratio < hi or (hi == 1.0 and ratio == 1.0)


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
    """Per-image metrics (N,) of composited images in [-1,1]:
    :func:`deepfill.evaluation.metrics.image_metrics`, the definition validation uses too."""
    values = image_metrics(to_unit(completed), to_unit(target), mask, lpips_net)
    return {k: v.cpu() for k, v in values.items()}


def evaluate(
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    methods: dict[str, Method],
    lpips_net: torch.nn.Module | None = None,
    realism: RealismFeatures | None = None,
    sheet: ContactSheet | None = None,
) -> list[dict]:
    """Run every method on every batch; returns one record per (method, image): the image's
    index in the order of the batches, its hole ratio and its metrics. ``realism``, when given,
    collects the Inception features of the real images and of every method's completions;
    ``sheet`` the ranked method's worst and best completions."""
    records = []
    seen = 0
    for image, mask in batches:
        ratios = mask.float().mean(dim=(1, 2, 3)).cpu()
        if realism is not None:
            realism.add_real(to_unit(image))
        outputs, scores = {}, {}
        for name, method in methods.items():
            with torch.no_grad():
                output = method(image, mask)
            completed = composite(output, image, mask)
            outputs[name] = completed
            if realism is not None:
                realism.add(name, to_unit(completed))
            values = per_image_metrics(completed, image, mask, lpips_net)
            scores[name] = values
            for i in range(image.shape[0]):
                record = {"method": name, "image": seen + i, "hole_ratio": float(ratios[i])}
                record |= {k: float(v[i]) for k, v in values.items()}
                records.append(record)
        if sheet is not None and sheet.ranked in scores and sheet.metric in scores[sheet.ranked]:
            ranking = scores[sheet.ranked][sheet.metric]
            for i in range(image.shape[0]):
                row = {name: out[i].cpu() for name, out in outputs.items()}
                sheet.offer(seen + i, float(ranking[i]), image[i].cpu(), mask[i].cpu(), row)
        seen += image.shape[0]
    return records


def summarise(records: list[dict]) -> list[dict]:
    """Mean of every metric per method, overall and per hole-ratio bin (LaMa's 10 bins)."""
    rows = []
    methods = list(dict.fromkeys(r["method"] for r in records))
    for method in methods:
        mine = [r for r in records if r["method"] == method]
        groups = [("all", mine)]
        for name, (lo, hi) in _BIN_EDGES.items():
            members = [r for r in mine if _in_bin(r["hole_ratio"], lo, hi)]
            if members:
                groups.append((name, members))
        for name, members in groups:
            row = {"method": method, "hole_ratio": name, "images": len(members)}
            for metric in METRIC_NAMES:
                present = [m[metric] for m in members if metric in m]
                if present:
                    row[metric] = float(np.mean(present))
            rows.append(row)
    return rows


def add_realism(
    rows: list[dict], records: list[dict], realism: RealismFeatures, min_images: int = MIN_REALISM_IMAGES
) -> list[str]:
    """Add FID, KID, P-IDS and U-IDS to the summary rows of :func:`summarise`: overall, and per
    hole-ratio bin where the bin holds at least ``min_images`` images (the others get ``n/a``).
    Returns the notes that say where a value is missing and why."""
    notes = []
    skipped = set()
    for row in rows:
        lo, hi = _BIN_EDGES.get(row["hole_ratio"], (0.0, 1.0))  # "all": every image
        mine = [r for r in records if r["method"] == row["method"] and _in_bin(r["hole_ratio"], lo, hi)]
        index = np.array([r["image"] for r in mine], dtype=int)
        enough = len(index) >= (2 if row["hole_ratio"] == "all" else min_images)
        if not enough:
            row |= dict.fromkeys(REALISM_METRICS, "n/a")
            skipped.add(row["hole_ratio"])
            continue
        row |= realism.scores(row["method"], index)
    bins = sorted(b for b in skipped if b != "all")
    if bins:
        notes.append(
            f"FID, KID, P-IDS and U-IDS are n/a in the hole-ratio bins {', '.join(bins)}: fewer than "
            f"{min_images} images each"
        )
    if "all" in skipped:
        notes.append("FID, KID, P-IDS and U-IDS need at least 2 images")
    return notes


def write_tables(rows: list[dict], out_dir: Path, title: str = "") -> tuple[Path, Path]:
    """``metrics.csv`` and ``metrics.md``: one row per method and hole-ratio bin, a column per
    metric computed (``title`` above the markdown table)."""
    names = [*METRIC_NAMES, *REALISM_METRICS]
    columns = ["method", "hole_ratio", "images", *[m for m in names if any(m in r for r in rows)]]
    return write_table(rows, columns, out_dir / "metrics.csv", out_dir / "metrics.md", title=title)


def write_protocol_tables(rows: list[dict], out_dir: Path) -> tuple[Path, Path]:
    """``protocols.csv`` and ``protocols.md``: per mask protocol (rows keyed ``protocol``, as
    ``deepfill-eval protocol=[...]`` collects them) one table of the methods over all images,
    the set metrics first, as the field's tables show them."""
    overall = [r for r in rows if r["hole_ratio"] == "all"]
    order = ["fid", "kid", "p_ids", "u_ids", "lpips", "psnr", "ssim", "l1_hole"]
    shown = [m for m in order if any(m in r for r in overall)]
    names = {
        **{m: s.display for m, s in METRICS.items()},
        **{m: s.display for m, s in REALISM_METRICS.items()},
    }
    formats = {
        **{m: s.format for m, s in METRICS.items()},
        **{m: s.format for m, s in REALISM_METRICS.items()},
    }
    csv_path = write_csv(
        overall, ["protocol", "method", "images", *shown, "kid_std"], out_dir / "protocols.csv"
    )
    lines = ["# Evaluation by mask protocol", ""]
    for protocol in dict.fromkeys(r["protocol"] for r in overall):
        mine = [r for r in overall if r["protocol"] == protocol]
        cells = [[r["method"], r["images"], *(_cell(r.get(m, ""), formats[m]) for m in shown)] for r in mine]
        lines += [
            f"## {protocol}",
            "",
            *markdown_table(["method", "images", *(names[m] for m in shown)], cells),
            "",
        ]
    md_path = out_dir / "protocols.md"
    with atomic_path(md_path) as tmp:
        tmp.write_text("\n".join(lines))
    return csv_path, md_path


def _cell(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, float) else str(value)


def mask_files(folder: Path) -> list[Path]:
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
    protocol: tuple[MaskGenerator, int] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(image, mask)`` batches of the first ``limit`` items of an evaluation dataset (all when
    None): each item's fixed mask; with ``mask_files`` item i gets file i; with ``protocol``
    (a mask generator and a seed) item i gets the protocol's mask i (:func:`eval_mask`).

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
    return _batches_of(dataset, limit, batch_size, device, mask_files, protocol)


def _batches_of(dataset, limit: int, size: int, device, mask_files, protocol) -> Iterator:
    for start in range(0, limit, size):
        items = [dataset[i] for i in range(start, min(start + size, limit))]
        image = torch.stack([it["image"] for it in items])
        if protocol is not None:
            generator, seed = protocol
            h, w = image.shape[-2:]
            mask = torch.stack([eval_mask(generator, seed, start + i, h, w) for i in range(len(items))])
        elif mask_files is None:
            mask = torch.stack([it["mask"] for it in items])
        else:  # item i gets mask file i: a fixed set shared across methods and papers
            h, w = image.shape[-2:]
            arrays = [_file_mask(mask_files[i], h, w) for i in range(start, start + len(items))]
            mask = torch.from_numpy(np.stack(arrays)).unsqueeze(1)
        yield image.to(device), mask.to(device)


def methods_with_baselines(
    generator: torch.nn.Module, baselines, precision: str = "fp32"
) -> dict[str, Method]:
    """DeepFill's refined output (in ``precision``, see :mod:`deepfill.utils.precision`) and the named
    baselines, each a function of ``(image, mask)``."""
    from deepfill.utils.precision import autocast

    def deepfill(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with autocast(image.device, precision):
            return generator(image, mask)[1].float()

    methods: dict[str, Method] = {"deepfill": deepfill}
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
    records: list[dict] | None = None,
) -> list[dict]:
    """The generator and the baselines on the first ``limit`` items of an evaluation dataset,
    with their fixed masks: one summary row per method (all images), as ``deepfill-eval``.
    ``records``, when given, receives the per-image records (:func:`evaluate`)."""
    was_training = generator.training
    generator.eval()
    try:
        batches = dataset_batches(dataset, limit, batch_size, device)
        per_image = evaluate(batches, methods_with_baselines(generator, baselines))
    finally:
        generator.train(was_training)
    if records is not None:
        records.extend(per_image)
    return [row for row in summarise(per_image) if row["hole_ratio"] == "all"]


def write_baseline_comparison(
    generator: torch.nn.Module, dataset, spec, out: Path
) -> tuple[list[dict], Path]:
    """A training run's closing comparison: :func:`compare_with_baselines` on the first
    ``spec.limit`` validation items (``spec``: ``limit``, ``batch_size``, ``baselines``, as the
    ``baseline_comparison`` config), written to ``out/comparison.csv`` and ``.md`` and, per image,
    ``comparison_images.csv`` (for the evaluation noise of a comparison: the spread over images,
    a paired bootstrap between runs). Returns the summary rows and the Markdown table's path."""
    device = next(generator.parameters()).device
    records: list[dict] = []
    rows = compare_with_baselines(
        generator, dataset, spec.get("limit"), int(spec.get("batch_size", 8)), spec.baselines, device, records
    )
    columns = ["method", "images", *network_free_metrics()]
    _, md_path = write_table(rows, columns, out / "comparison.csv", out / "comparison.md")
    write_csv(records, ["method", "image", "hole_ratio", *columns[2:]], out / "comparison_images.csv")
    return rows, md_path


def comparison_lines(rows: list[dict]) -> list[str]:
    """One line per method with the summary metrics of the registry (PSNR, SSIM, L1 in the
    hole; images in [0,1])."""
    shown = [spec for spec in METRICS.values() if spec.in_summary]
    lines = []
    for row in rows:
        cells = [
            f"{spec.display} {row[spec.name]:{spec.format}}" + (f" {spec.unit}" if spec.unit else "")
            for spec in shown
            if spec.name in row
        ]
        lines.append(f"{row['method']:<11s} " + "   ".join(cells) + f"   ({row['images']} images)")
    return lines


def comparison_verdict(rows: list[dict], model: str = "deepfill") -> list[str]:
    """Plain words on a comparison: for each baseline, the summary metrics on which ``model`` is
    behind it (in each metric's direction), or that it is ahead on all of them."""
    by_method = {row["method"]: row for row in rows}
    ours = by_method.get(model)
    if ours is None:
        return []
    shown = [spec for spec in METRICS.values() if spec.in_summary and spec.name in ours]
    lines = []
    for name, row in by_method.items():
        if name == model:
            continue
        behind = []
        for spec in shown:
            if spec.name in row:
                ahead = ours[spec.name] - row[spec.name]
                if (ahead < 0) if spec.higher_is_better else (ahead > 0):
                    behind.append(spec.display)
        if behind:
            lines.append(f"{model} is behind {name} on {', '.join(behind)}")
        else:
            lines.append(f"{model} is ahead of {name} on every metric")
    return lines
