"""``deepfill-make-masks <out> --preset thick --count 1000``: a fixed evaluation mask set as PNGs."""

from __future__ import annotations

import argparse

from deepfill.data.masks import PRESETS, write_eval_set
from deepfill.utils.errors import report_errors

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    parser = argparse.ArgumentParser(
        prog="deepfill-make-masks",
        description="Write deterministic evaluation masks (255 = hole) as PNG files.",
    )
    parser.add_argument("out", help="output folder")
    parser.add_argument("--preset", default="thick", choices=sorted(PRESETS))
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = report_errors(
        "deepfill-make-masks", write_eval_set, args.out, args.preset, args.count, *args.size, args.seed
    )
    height, width = args.size
    print(f"wrote {len(paths)} {args.preset} masks ({height}x{width}, seed {args.seed}) to {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
