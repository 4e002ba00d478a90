"""``deepfill-selftest``: before a long run on a new GPU node, check in minutes that it will work.

    deepfill-selftest                                   # every visible GPU (the CPU when none)
    deepfill-selftest --goldens shared/goldens/official_v1 --out selftest
    deepfill-selftest --sizes 512 --train-batch 4 --budget 120

Prints one line per check and a verdict line; writes ``report.json`` and ``report.md`` in
``--out``. Exit status 0 when no check failed, 1 when one did, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from deepfill.utils.errors import UserError, report_errors

__all__ = ["main"]

# The goldens beside a checkout of the project (shared/goldens/official_v1 and _v2), when there.
_DEFAULT_GOLDENS = Path(__file__).resolve().parents[3].parent / "shared" / "goldens" / "official_v1"
_DEFAULT_GOLDENS_V2 = _DEFAULT_GOLDENS.parent / "official_v2"
PRECISIONS = ("float32", "tf32", "bf16")


def _run(args: argparse.Namespace) -> int:
    import torch

    from deepfill.models import CPU_CHUNK_BYTES_REUSED
    from deepfill.selftest import SelfTestOptions, run_selftest, verdict, write_report
    from deepfill.utils.cpu import configure_cpu

    chunk_bytes = CPU_CHUNK_BYTES_REUSED if configure_cpu() else None
    goldens = args.goldens
    if goldens is None and (_DEFAULT_GOLDENS / "gen_256.npz").is_file():
        goldens = _DEFAULT_GOLDENS
    if goldens is not None and not (goldens / "gen_256.npz").is_file():
        raise UserError(f"--goldens {goldens}: expected the official_v1 goldens folder (with gen_256.npz)")
    goldens_v2 = args.goldens_v2
    if goldens_v2 is None and (_DEFAULT_GOLDENS_V2 / "gen_v2_256.npz").is_file():
        goldens_v2 = _DEFAULT_GOLDENS_V2
    if goldens_v2 is not None and not (goldens_v2 / "gen_v2_256.npz").is_file():
        raise UserError(
            f"--goldens-v2 {goldens_v2}: expected the official_v2 goldens folder (with gen_v2_256.npz)"
        )
    on_gpu = torch.cuda.is_available() and torch.cuda.device_count() > 0
    options = SelfTestOptions(
        goldens=goldens,
        goldens_v2=goldens_v2,
        sizes=tuple(args.sizes or ((512, 1024, 2048) if on_gpu else (256, 512))),
        train_size=args.train_size,
        train_batch=args.train_batch or (16 if on_gpu else 2),
        budget_s=args.budget,
        ddp=not args.no_ddp,
        precisions=tuple(args.precisions) if args.precisions else None,
        compile={"auto": None, "yes": True, "no": False}[args.compile],
        cpu_chunk_bytes=chunk_bytes,
    )
    out = args.out or Path("outputs") / "selftest" / time.strftime("%Y-%m-%d_%H-%M-%S")
    start = time.monotonic()
    checks = run_selftest(options, out)
    json_path, md_path = write_report(checks, out, time.monotonic() - start)
    line = verdict(checks)
    print(f"deepfill-selftest: {line}; report: {md_path} and {json_path.name}", flush=True)
    return 1 if line.startswith("FAIL") else 0


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    parser = argparse.ArgumentParser(
        prog="deepfill-selftest",
        description="Check this machine's devices for DeepFill training: parity with the official "
        "graph, a training iteration per precision, speed and memory, DDP.",
    )
    parser.add_argument(
        "--goldens", type=Path, default=None, help="the official_v1 goldens folder (parity checks)"
    )
    parser.add_argument(
        "--goldens-v2", type=Path, default=None, help="the official_v2 goldens folder (v2 parity checks)"
    )
    parser.add_argument("--out", type=Path, default=None, help="report folder")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=None, help="inference sizes (GPU: 512 1024 2048)"
    )
    parser.add_argument("--train-size", type=int, default=256, help="training image size")
    parser.add_argument("--train-batch", type=int, default=None, help="training batch (GPU: 16)")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds for all checks")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=None)
    parser.add_argument("--no-ddp", action="store_true", help="skip the multi-GPU check")
    parser.add_argument(
        "--compile",
        choices=("auto", "yes", "no"),
        default="auto",
        help="also time compiled training iterations (auto: on GPUs)",
    )
    args = parser.parse_args(argv)
    for name in ("train_size", "train_batch"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')}: must be >= 1, got {value}")
    for size in [args.train_size, *(args.sizes or [])]:
        if size % 8:
            parser.error(f"size {size}: must be a multiple of 8")
    if args.budget <= 0:
        parser.error(f"--budget: must be > 0, got {args.budget}")
    status = report_errors("deepfill-selftest", _run, args)
    sys.exit(status or 0)


if __name__ == "__main__":
    main()
