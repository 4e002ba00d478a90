"""``deepfill-convert <tf_checkpoint> <out.pt>``: official TF weights to a PyTorch file."""

from __future__ import annotations

import argparse

from deepfill.utils.errors import report_errors

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    parser = argparse.ArgumentParser(
        prog="deepfill-convert",
        description="Convert an official DeepFill v1 or v2 TF checkpoint (or .npz) to a PyTorch state dict.",
    )
    parser.add_argument("checkpoint", help="checkpoint folder, prefix (e.g. .../snap-0) or .npz")
    parser.add_argument("output", help="output .pt file")
    parser.add_argument("--keep-bgr", action="store_true", help="keep the official BGR channel order")
    parser.add_argument("--backend", choices=("auto", "python", "tensorflow"), default="auto")
    args = parser.parse_args(argv)
    from deepfill.official.convert import convert_checkpoint  # PyTorch: after the arguments are read

    count, family = report_errors(
        "deepfill-convert", convert_checkpoint, args.checkpoint, args.output, args.keep_bgr, args.backend
    )
    order = "BGR" if args.keep_bgr else "RGB"
    print(f"wrote {args.output} (DeepFill {family}, {count:,} parameters, {order} input)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
