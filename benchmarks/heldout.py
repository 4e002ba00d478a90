"""Score trained weights on photos no quickstart model trains on, against the classical fills.

The held-out set: 256x256 crops (three per photo, along its longer side, after its shorter side
is resized to 512) of photographs that installed packages ship and the embedded training data
does not hold: scikit-image's coffee and rocket (the quickstart's validation photos),
matplotlib's portrait of Grace Hopper and, when Debian's ``plasma-workspace-wallpapers`` is
installed, eleven of its photographs. Each set of weights is scored by ``deepfill-eval`` with a
centred box of half the side (``mask=rect_v1``) and with the v2 brush strokes, fixed masks.

    python benchmarks/heldout.py --weights run1/checkpoints/last.ckpt run2/checkpoints/last.ckpt
    python benchmarks/heldout.py --weights ... --out benchmarks/results/heldout-quickstart.json

Prints one table per mask kind (mean over images; PSNR in dB, SSIM, L1 in the hole on [0, 1]).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

BIN = Path(sys.executable).parent
WALLPAPERS = Path("/usr/share/wallpapers")
# Photographs of the wallpaper package (the others are illustrations).
PHOTOS = (
    "Altai",
    "Autumn",
    "BytheWater",
    "Canopee",
    "Cascade",
    "ColdRipple",
    "ColorfulCups",
    "EveningGlow",
    "FallenLeaf",
    "IceCold",
    "Kite",
)
MASKS = {
    "box": ["mask=rect_v1"],
    "strokes": ["mask=free_form_v2", "mask.eval._target_=deepfill.data.masks.free_form"],
}
METRICS = ("psnr", "ssim", "l1_hole")


def photos() -> dict[str, np.ndarray]:
    """Name -> (H, W, 3) uint8 of every held-out photo available on this machine."""
    import matplotlib.cbook
    from skimage import data

    found = {"coffee": data.coffee(), "rocket": data.rocket()}
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as file:
        found["grace_hopper"] = np.asarray(Image.open(file).convert("RGB"))
    for name in PHOTOS:
        images = sorted((WALLPAPERS / name / "contents" / "images").glob("*.jpg"))
        if images:  # the largest size the package has
            largest = max(images, key=lambda p: Image.open(p).size[0])
            found[name] = np.asarray(Image.open(largest).convert("RGB"))
    return found


def write_crops(out: Path, size: int = 256) -> int:
    """Three ``size`` crops per photo into ``out``; returns how many."""
    from deepfill.data.image_files import crops_along_longer_side

    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for name, array in photos().items():
        for i, crop in enumerate(crops_along_longer_side(array, size, size)):
            Image.fromarray(crop).save(out / f"{name}_{i}.png")
            count += 1
    return count


def score(weights: Path, crops: Path, kind: str, out: Path) -> dict[str, dict[str, float]]:
    """Method -> metric -> mean over the crops, from deepfill-eval's table (written to ``out``)."""
    args = [
        str(BIN / "deepfill-eval"),
        f"weights={weights}",
        "data=folder",
        f"data.val.root={crops}",
        "data.image_size=256",
        "lpips=false",
        f"output={out}",
        f"hydra.run.dir={out}/run",
        *MASKS[kind],
    ]
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)}\n{result.stderr[-2000:]}")
    with (out / "metrics.csv").open() as file:
        rows = [r for r in csv.DictReader(file) if r["hole_ratio"] == "all"]
    return {r["method"]: {m: float(r[m]) for m in METRICS} | {"images": int(r["images"])} for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", type=Path, nargs="+", required=True)
    parser.add_argument("--out", type=Path, default=None, help="JSON of every score")
    parser.add_argument("--crops", type=Path, default=None, help="keep the crops in this folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        crops = args.crops or work / "crops"
        count = write_crops(crops)
        print(f"{count} held-out crops in {crops}", flush=True)
        results: dict = {"crops": count, "runs": {}}
        for i, weights in enumerate(args.weights):
            results["runs"][str(weights)] = {
                kind: score(weights, crops, kind, work / f"{i}-{kind}") for kind in MASKS
            }
    for kind in MASKS:
        print(f"\n{kind}: PSNR / SSIM / L1 in the hole")
        for weights, run in results["runs"].items():
            for method, values in run[kind].items():
                if method == "deepfill" or weights == next(iter(results["runs"])):
                    label = weights if method == "deepfill" else f"  {method}"
                    print(
                        f"  {values['psnr']:6.2f} / {values['ssim']:.3f} / {values['l1_hole']:.4f}  {label}"
                    )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
