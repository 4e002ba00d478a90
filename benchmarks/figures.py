"""The README's pictures, from trained weights, on images the models never saw.

    python benchmarks/figures.py quickstart --weights outputs/quickstart/runs/<time>/checkpoints/last.ckpt
    python benchmarks/figures.py ca_ablation --sweep outputs/sweeps/ca_ablation

``quickstart``: held-out photos that ship with installed packages (scikit-image's coffee and rocket,
the quickstart's validation photos, and matplotlib's portrait of Grace Hopper), each with a
centred box of half the side and with brush strokes, at 256x256: input, coarse, refined,
completed, ground truth, attention flow. ``ca_ablation``: validation textures of the ablation
sweep: input, without CA, with CA, attention flow, ground truth.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepfill.data import masks as M
from deepfill.data.datasets import _fit, _sample_photo
from deepfill.inference import generator_from_checkpoint
from deepfill.training.visuals import comparison_grid, inpainting_grid
from deepfill.utils.images import to_tensor

IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"


def heldout_photos(size: int = 256) -> torch.Tensor:
    """(3,3,size,size) in [-1,1]: photos no quickstart model trains on."""
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = np.asarray(Image.open(f).convert("RGB"))
    photos = [_sample_photo("coffee"), _sample_photo("rocket"), hopper]
    return torch.stack([to_tensor(_fit(p, size, None, "upscale")) for p in photos])


def quickstart(args: argparse.Namespace) -> Path:
    generator = generator_from_checkpoint(args.weights)
    photos = heldout_photos()
    size = photos.shape[-1]
    box = M.centered_rectangle(size, size)
    strokes = [M.free_form(size, size, np.random.default_rng([3, i])) for i in range(len(photos))]
    image = torch.cat([photos, photos])
    mask = torch.stack([box] * len(photos) + strokes)
    with torch.no_grad():
        x1, x2, offsets = generator(image, mask)
    grid = inpainting_grid(image, mask, x1, x2, offsets, max_rows=len(image))
    out = Path(args.out or IMAGES / "quickstart_heldout.jpg")
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(out, quality=90)
    return out


def ca_ablation(args: argparse.Namespace) -> Path:
    from hydra.utils import instantiate

    from deepfill.sweeps.jobs import finished_jobs

    runs, cfg = {}, None
    for folder, job_cfg in finished_jobs(args.sweep):
        with_ca = job_cfg.model.generator.get("contextual_attention", True)
        runs["with CA" if with_ca else "without CA"] = folder
        cfg = job_cfg
    if set(runs) != {"with CA", "without CA"}:
        raise SystemExit(
            f"{args.sweep}: needs the two finished runs of +sweep=ca_ablation, found {sorted(runs)}"
        )
    datamodule = instantiate(cfg.data)
    datamodule.setup("validate")
    items = [datamodule.datasets["val"][i] for i in range(args.rows)]
    image = torch.stack([it["image"] for it in items])
    mask = torch.stack([it["mask"] for it in items])
    outputs = {}
    for name in ("without CA", "with CA"):
        generator = generator_from_checkpoint(str(runs[name] / "checkpoints" / "last.ckpt"))
        with torch.no_grad():
            _, outputs[name], offsets = generator(image, mask)
    grid, _ = comparison_grid(image, mask, outputs, offsets)  # flow of the last: with CA
    out = Path(args.out or IMAGES / "ca_ablation.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="figure", required=True)
    q = sub.add_parser("quickstart", help="held-out photos filled by a quickstart model")
    q.add_argument("--weights", required=True, help="a training checkpoint (.ckpt)")
    q.add_argument("--out", help="image path (default docs/images/quickstart_heldout.jpg)")
    c = sub.add_parser("ca_ablation", help="textures filled with and without contextual attention")
    c.add_argument("--sweep", default="outputs/sweeps/ca_ablation", help="the +sweep=ca_ablation folder")
    c.add_argument("--rows", type=int, default=4)
    c.add_argument("--out", help="PNG path (default docs/images/ca_ablation.png)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    out = quickstart(args) if args.figure == "quickstart" else ca_ablation(args)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
