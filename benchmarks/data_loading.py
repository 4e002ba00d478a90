"""Mask generators (masks/s, hole ratios) and the training data loader (samples/s)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from common import RESULTS


# ---------------------------------------------------------------------- masks and data loading
def masks(args: argparse.Namespace) -> dict:
    """Masks per second per generator at 256^2 and 512^2, and hole-ratio statistics."""
    from deepfill.data import masks as M

    rows = []
    ratios: dict[str, list[float]] = {}
    for name, generator in M.PRESETS.items():
        for size in (256, 512):
            rng = np.random.default_rng(0)
            count = 200
            start = time.perf_counter()
            drawn = [generator(size, size, rng) for _ in range(count)]
            rate = count / (time.perf_counter() - start)
            row = {"preset": name, "size": size, "masks_per_s": rate}
            if size == 256:
                values = [
                    M.hole_ratio(M.eval_mask(generator, 0, i, 256, 256)) for i in range(args.mask_samples)
                ]
                ratios[name] = values
                row |= {"mean_ratio": float(np.mean(values)), "median_ratio": float(np.median(values))}
            rows.append(row)
            del drawn
            print(f"masks {name:13s} {size}^2: {rate:8.0f} masks/s", flush=True)
    _plot_ratios(ratios, RESULTS / "mask_hole_ratios.png")
    return {"rows": rows, "ratios": ratios}


def _plot_ratios(ratios: dict[str, list[float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(12, 6), sharex=True)
    for ax, (name, values) in zip(axes.flat, ratios.items(), strict=False):
        ax.hist(values, bins=np.linspace(0, 1, 41), color="#4477aa")
        ax.set_title(f"{name}  (mean {np.mean(values):.2f})")
        ax.set_xlabel("hole ratio")
    fig.suptitle(f"Hole-ratio histograms, {len(next(iter(ratios.values())))} evaluation masks at 256x256")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    print(f"hole-ratio histograms written to {out}")


def loader(args: argparse.Namespace) -> list[dict]:
    """Training loader throughput at 256^2 from JPEG files with 0, 1 and 2 workers."""
    import tempfile

    from PIL import Image

    from deepfill.data import masks as M
    from deepfill.data.datamodule import InpaintDataModule
    from deepfill.data.datasets import SampleImages, image_folder

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # Places2-like files: 96 JPEGs of 512x384 cut from the embedded photos.
        photos = SampleImages("train", image_size=384)
        rng = np.random.default_rng(0)
        for i in range(96):
            crop = photos.get(i, rng)
            array = ((crop.permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)
            Image.fromarray(array).resize((512, 384)).save(f"{tmp}/{i:03d}.jpg", quality=90)
        for workers in args.workers:
            dm = InpaintDataModule(
                train=image_folder(tmp, image_size=256),
                train_masks=M.free_form,
                eval_masks=M.centered_rectangle,
                batch_size=16,
                num_workers=workers,
                persistent_workers=workers > 0,
            )
            dm.setup("fit")
            loader_ = dm.train_dataloader()
            for _ in loader_:  # warm-up epoch: worker start-up, page cache
                pass
            start, count = time.perf_counter(), 0
            for _ in range(3):
                for batch in loader_:
                    count += batch["image"].shape[0]
            rate = count / (time.perf_counter() - start)
            rows.append({"workers": workers, "samples_per_s": rate})
            print(f"loader 256^2 JPEG, {workers} workers: {rate:.0f} samples/s", flush=True)
    return rows
