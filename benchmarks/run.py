"""DeepFill benchmarks: generator inference, contextual attention, FLOPs, a profile, mask
generators, the training data loader and training steps.

Usage (``make bench`` runs the default set):
    python benchmarks/run.py                       # everything below, results in benchmarks/results/
    python benchmarks/run.py generator --sizes 256 512 --repeats 5
    python benchmarks/run.py attention --repeats 5
    python benchmarks/run.py large-rows --size 512 --chunk-mb 16
                                                   # attention rows over the chunk budget: memory
    python benchmarks/run.py flops
    python benchmarks/run.py profile --size 512
    python benchmarks/run.py masks                 # masks/s per preset and hole-ratio histograms
    python benchmarks/run.py loader                # training loader samples/s by worker count
    python benchmarks/run.py training              # seconds per generator update, per part
    python benchmarks/run.py training --train-batch 8 --port-dir <checkout of the PyTorch port>
                                                   # ... and the port's, timed beside it
    python benchmarks/run.py training --dtype bfloat16   # bf16 mixed precision (trainer=cpu_bf16)
    python benchmarks/run.py versus --baseline-src <older checkout>/src --sizes 512 1024
                                                   # default generator against another version
    python benchmarks/run.py precision --weights <ckpt>  # bf16 inference: speed and quality

Every timing is the median of ``--repeats`` runs after one warm-up run, with ``--threads`` CPU
threads (2 by default, the development machine). Each generator size runs in its own process so
that its peak resident memory (ru_maxrss) is its own.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from attention import attention, large_rows, large_rows_one
from common import RESULTS, machine, write_results
from data_loading import loader, masks
from deepfill.utils.cpu import configure_cpu
from generator import flops, generator, generator_one, precision, profile, versus
from training import port_training, training


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "what",
        nargs="?",
        default="all",
        choices=(
            "all",
            "generator",
            "generator-one",
            "attention",
            "large-rows",
            "large-rows-one",
            "flops",
            "profile",
            "masks",
            "loader",
            "training",
            "port-training",
            "precision",
            "versus",
        ),
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument(
        "--layouts", nargs="+", default=["nchw", "channels_last"], choices=("nchw", "channels_last")
    )
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--repeats-2048", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--mask-samples", type=int, default=1000)
    parser.add_argument("--train-size", type=int, default=256)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--train-iterations", type=int, default=3, help="timed generator updates")
    parser.add_argument(
        "--port-dir",
        type=Path,
        default=None,
        help="a checkout of daa233/generative-inpainting-pytorch: time its training beside ours",
    )
    parser.add_argument(
        "--port-runtime",
        default="default",
        choices=("default", "ours"),
        help="the port with PyTorch's defaults, or with this project's CPU settings (configure_cpu)",
    )
    parser.add_argument("--baseline-src", type=Path, default=None, help="an older checkout's src (versus)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (versus)")
    parser.add_argument("--weights", type=Path, default=None, help="trained weights (precision)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    parser.add_argument("--chunk-mb", type=int, default=16, help="attention chunk budget, large-rows")
    parser.add_argument(
        "--mode", default="kept", choices=("kept", "returned", "default"), help="large-rows-one"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.what == "port-training":
        # The port as its users run it, unless asked to give it this project's CPU settings.
        if args.port_runtime == "ours":
            configure_cpu()
        print(json.dumps(port_training(args)))
        return
    if args.what == "large-rows-one":  # sets the process up itself
        print(json.dumps(large_rows_one(args)))
        return
    # As every command of the project does: no subnormal floats, freed memory reused, and then
    # the attention's larger CPU chunks.
    from deepfill.models import CPU_CHUNK_BYTES_REUSED

    args.cpu_chunk_bytes = CPU_CHUNK_BYTES_REUSED if configure_cpu() else None
    if args.what == "generator-one":
        print(json.dumps(generator_one(args)))
        return
    results: dict = {"machine": machine()}
    if args.what in ("all", "generator"):
        results["generator"] = generator(args)
    if args.what in ("all", "attention"):
        results["attention"] = attention(args)
    if args.what in ("all", "flops"):
        results["flops"] = flops(argparse.Namespace(sizes=[s for s in args.sizes if s <= 512] or [256, 512]))
    if args.what in ("all", "profile"):
        results["profile"] = profile(args)
    if args.what in ("all", "masks"):
        results["masks"] = masks(args)
    if args.what in ("all", "loader"):
        results["loader"] = loader(args)
    if args.what in ("all", "training"):
        results["training"] = training(args)
    if args.what == "precision":
        results["precision"] = precision(args)
    if args.what == "versus":
        results["versus"] = versus(args)
    if args.what == "large-rows":
        results["large_rows"] = large_rows(args)
    write_results(
        results, args.out or RESULTS / f"{args.what}-{results['machine']['device'].replace(' ', '_')}.json"
    )


if __name__ == "__main__":
    main()
