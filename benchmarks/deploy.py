"""onnxruntime against the PyTorch path, side by side: generator time and peak memory per size.

The generator is exported once (``deepfill.deploy.export_onnx``, fp32; ``--fp16`` adds the
half-precision export), then every size is timed in fresh processes, alternating between the
ways in each round so that all see the same machine state: the PyTorch path as the commands
run it (``configure_cpu()``, inference mode) and the .onnx file through
``deepfill.deploy.OnnxGenerator`` (onnxruntime's CPU provider) after ``configure_cpu()`` too, as
``deepfill-inpaint`` runs it; both with the same thread count.
Each process also reports its peak resident memory (``VmHWM``: model, libraries and the
largest working set of the run).

    python benchmarks/deploy.py                                  # 256², 512², 1024²
    python benchmarks/deploy.py --sizes 512 --weights places2_v1.pt --fp16
    python benchmarks/deploy.py --quality --weights last.ckpt --photos held_out/   # fp16 vs fp32
    python benchmarks/deploy.py --int8 --quality --weights last.ckpt --photos held_out/

``--single`` times one call per process, the first (no warm-up): what ``deepfill-inpaint`` does
with one photo, for sizes too slow to repeat (``--sizes 4096 --single --rounds 1``).

``--baseline-src <older checkout>/src`` also exports the same generator with that version's
code (in a process of its own) and times its .onnx file beside the others:

    python benchmarks/deploy.py --sizes 1024 2048 --baseline-src /tmp/before/src

``--profile`` adds one profiled call per process and splits its time into convolutions and the
rest; for the PyTorch path also the contextual attention layer (every operator of its forward,
its preparation included); for onnxruntime also ELU, the layout reorders it puts around its
blocked convolutions, and the attention's loops (the nodes of the ``Scan`` bodies; the
preparation before them counts as the rest). Medians over the rounds.

``--quality`` scores the fp32 and fp16 exports and the PyTorch generator on photos it never saw
(``--photos``: a folder, else scikit-image's held-out coffee and rocket), 256x256 centre crops,
a box and a free-form hole each: PSNR inside the hole against the photo, and of the fp16 and
int8 exports against the fp32 one (``--int8``: calibrated on the embedded training photos, or
``--calibration``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import timed_generator_calls

RESULTS = Path(__file__).resolve().parent / "results"
SRC = Path(__file__).resolve().parents[1] / "src"

_CHILD_SETUP = """
import json, statistics, time, torch
torch.set_num_threads({threads})
size, way, path = {size}, {way!r}, {path!r}
if way == "pytorch":
    from deepfill.models import CPU_CHUNK_BYTES_REUSED, set_cpu_chunk_bytes
    from deepfill.utils.cpu import configure_cpu
    reused = configure_cpu()
    generator = torch.load(path, weights_only=False).eval()
    set_cpu_chunk_bytes(generator, CPU_CHUNK_BYTES_REUSED if reused else None)
else:  # as deepfill-inpaint runs it: the same CPU settings first
    from deepfill.deploy import OnnxGenerator
    from deepfill.utils.cpu import configure_cpu
    configure_cpu()
    generator = OnnxGenerator(path, threads={threads})
"""
_CHILD_REPORT = """
# VmHWM, not ru_maxrss: ru_maxrss survives exec, so a child reports at least the peak of the
# parent it was forked from (this script, after exporting).
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 2**20
parts = {{}}
if {profile}:  # one more call, profiled: where its time goes, in seconds of kernel time
    if way == "pytorch":
        from torch.profiler import ProfilerActivity, profile, record_function
        from deepfill.models import ContextualAttention
        # The attention's operators, whatever they are, counted apart: a named range around
        # the layer's forward.
        scope = record_function("contextual attention")

        def enter(*_):
            scope.__enter__()

        def leave(*_):
            scope.__exit__(None, None, None)

        for layer in generator.modules():
            if isinstance(layer, ContextualAttention):
                layer.register_forward_pre_hook(enter)
                layer.register_forward_hook(leave)
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
            generator(image, mask)
        events = prof.events()
        spans = [(e.time_range.start, e.time_range.end) for e in events if e.name == "contextual attention"]
        for event in events:
            if event.name == "contextual attention":
                continue
            if any(a <= event.time_range.start <= b for a, b in spans):
                kind = "attention"
            else:
                kind = "convolution" if "convolution" in event.name else "other"
            parts[kind] = parts.get(kind, 0.0) + event.self_cpu_time_total / 1e6
    else:
        import onnxruntime as ort
        options = generator.session.get_session_options()
        options.enable_profiling = True
        import os, tempfile
        options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feed = {{"image": image.numpy(), "mask": mask.numpy()}}
        session.run(None, feed)
        session.run(None, feed)
        trace_file = session.end_profiling()
        trace = json.load(open(trace_file))
        os.remove(trace_file)
        last = [e for e in trace if e.get("name") == "model_run"][-1]
        kinds = {{"Conv": "convolution", "FusedConv": "convolution", "Elu": "elu",
                 "ReorderInput": "layout reorders", "ReorderOutput": "layout reorders"}}
        start, end = last["ts"], last["ts"] + last["dur"]
        nodes = [e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
                 and start <= e["ts"] <= end]
        # The attention's loop: its body's nodes, counted once (not also as the Scan node).
        loops = [(e["ts"], e["ts"] + e["dur"]) for e in nodes if e["args"]["op_name"] == "Scan"]
        for e in nodes:
            if e["args"]["op_name"] == "Scan":
                continue
            in_loop = any(a <= e["ts"] <= b for a, b in loops)
            kind = "attention loop" if in_loop else kinds.get(e["args"]["op_name"], "other")
            parts[kind] = parts.get(kind, 0.0) + e["dur"] / 1e6
print(json.dumps({{"seconds": statistics.median(times), "peak_rss_gib": peak, "profile": parts}}))
"""
_CHILD = _CHILD_SETUP + timed_generator_calls("torch.inference_mode()") + _CHILD_REPORT
# One call per process, timed from the first: what `deepfill-inpaint` does with one photo, for
# sizes too slow to repeat (4096²: over half an hour a call on 2 cores).
_CHILD_SINGLE = _CHILD_SETUP + timed_generator_calls("torch.inference_mode()", warm_up=False) + _CHILD_REPORT


def _last_line(code: str, src: Path, what: str) -> str:
    """Run ``code`` in a fresh Python with ``src`` on its path; its last line of output."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise SystemExit(f"{what} failed:\n{run.stderr[-2000:]}")
    return run.stdout.strip().splitlines()[-1]


def _child(way: str, path: Path, size: int, args: argparse.Namespace) -> dict:
    repeats = 1 if args.single else max(1, args.repeats // 2) if size >= 1024 else args.repeats
    code = (_CHILD_SINGLE if args.single else _CHILD).format(
        threads=args.threads, size=size, way=way, path=str(path), repeats=repeats, profile=args.profile
    )
    return json.loads(_last_line(code, SRC, f"benchmark child ({way} {size}²)"))


_BASELINE_EXPORT = """
import json, torch
from deepfill.deploy import export_onnx
generator = torch.load({generator!r}, weights_only=False).eval()
report = export_onnx(generator, {path!r})
print(json.dumps({{"seconds": report.seconds, "megabytes": report.megabytes}}))
"""


def _export_baseline(src: Path, generator: Path, path: Path) -> dict:
    """Export the saved generator with the code under ``src`` (another version of deepfill)."""
    code = _BASELINE_EXPORT.format(generator=str(generator), path=str(path))
    return json.loads(_last_line(code, src, f"baseline export ({src})"))


def _photos(folder: Path | None, size: int) -> list:
    import numpy as np
    from PIL import Image

    from deepfill.data.datasets import _sample_photo

    if folder is None:
        pictures = [(name, _sample_photo(name)) for name in ("coffee", "rocket")]
    else:
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        pictures = [(p.name, np.asarray(Image.open(p).convert("RGB"))) for p in files]
    out = []
    for name, photo in pictures:
        image = Image.fromarray(photo)
        scale = size / min(image.size)
        image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))))
        left, top = (image.width - size) // 2, (image.height - size) // 2
        out.append((name, np.asarray(image.crop((left, top, left + size, top + size)))))
    return out


def _quality(generator, exports: dict[str, Path], args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from deepfill.data import masks
    from deepfill.deploy import OnnxGenerator
    from deepfill.inference import inpaint_array

    ways = {"pytorch": generator, **{f"onnxruntime {p}": OnnxGenerator(path) for p, path in exports.items()}}
    holes = {"box": masks.centered_rectangle, "free-form": masks.medium}
    scores: dict[str, dict[str, list[float]]] = {kind: {name: [] for name in ways} for kind in holes}
    versus: dict[str, list[float]] = {}

    def psnr(a, b) -> float:
        mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
        return 10 * np.log10(255.0**2 / max(mse, 1e-10))

    photos = _photos(args.photos, args.quality_size)
    for i, (_, photo) in enumerate(photos):
        for kind, make in holes.items():
            size = args.quality_size
            hole = make(size, size, np.random.default_rng(i))[0].numpy() > 0.5
            results = {name: inpaint_array(way, photo, hole).completed for name, way in ways.items()}
            for name, completed in results.items():
                scores[kind][name].append(psnr(completed[hole], photo[hole]))
            for precision in ("fp16", "int8"):
                if f"onnxruntime {precision}" in results:
                    versus.setdefault(f"{precision} {kind}", []).append(
                        psnr(results[f"onnxruntime {precision}"][hole], results["onnxruntime fp32"][hole])
                    )
    torch.set_num_threads(args.threads)
    table = {
        kind: {name: float(np.mean(values)) for name, values in by_way.items()}
        for kind, by_way in scores.items()
    }
    for kind in holes:
        line = ", ".join(f"{name} {value:.2f} dB" for name, value in table[kind].items())
        extra = "".join(
            f"; {key.split()[0]} against fp32 {np.mean(values):.1f} dB"
            for key, values in versus.items()
            if key.endswith(kind)
        )
        print(f"hole PSNR, {kind}, {len(photos)} photos: {line}{extra}", flush=True)
    return {
        "photos": [name for name, _ in photos],
        "size": args.quality_size,
        "hole_psnr_db": table,
        "against_fp32_psnr_db": {key: float(np.mean(v)) for key, v in versus.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument(
        "--repeats", type=int, default=4, help="timed runs per process (half at 1024² and up)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of fresh processes")
    parser.add_argument(
        "--single", action="store_true", help="one call per process, timed from the first (no warm-up)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--weights", type=Path, default=None, help="weights (default: a Glorot-initialised model)"
    )
    parser.add_argument("--fp16", action="store_true", help="also time the fp16 export")
    parser.add_argument("--int8", action="store_true", help="also time the int8 export")
    parser.add_argument("--calibration", type=Path, default=None, help="--int8: photos to calibrate on")
    parser.add_argument("--quality", action="store_true", help="score the exports instead of timing them")
    parser.add_argument("--photos", type=Path, default=None, help="--quality: a folder of held-out photos")
    parser.add_argument("--quality-size", type=int, default=256)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile one call per process: seconds in convolutions, the attention, ELU, "
        "layout reorders, the rest",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="the src/ of another version: its fp32 export timed beside this one's",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = parser.parse_args()
    if args.baseline_src is not None and not (args.baseline_src / "deepfill").is_dir():
        parser.error(f"--baseline-src {args.baseline_src}: expected a src/ folder holding deepfill/")

    sys.path.insert(0, str(SRC))
    import torch

    from deepfill.deploy import export_onnx
    from deepfill.inference import load_generator
    from deepfill.models import InpaintGenerator

    torch.manual_seed(0)
    generator = load_generator(args.weights) if args.weights else InpaintGenerator().eval()
    folder = Path(tempfile.mkdtemp(prefix="deepfill-onnx-bench-"))
    ways = {"pytorch": folder / "generator.pt"}
    torch.save(generator, ways["pytorch"])
    precisions = ["fp32", *(["fp16"] if args.fp16 else []), *(["int8"] if args.int8 else [])]
    exports = {}
    for precision in precisions:
        calibration = args.calibration if precision == "int8" else None
        report = export_onnx(
            generator, folder / f"generator_{precision}.onnx", precision, calibration=calibration
        )
        ways[f"onnxruntime {precision}"] = report.path
        exports[precision] = {"seconds": report.seconds, "megabytes": report.megabytes}
        print(f"exported {precision} in {report.seconds:.0f} s ({report.megabytes:.1f} MB)", flush=True)
    if args.quality:
        from common import machine, write_results  # what every benchmark shares

        torch.set_num_threads(args.threads)
        exported = {p: Path(ways[f"onnxruntime {p}"]) for p in precisions}
        result = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
        result["quality"] = _quality(generator, exported, args)
        write_results(result, args.out or RESULTS / "onnx-quality-cpu.json")
        return
    if args.baseline_src is not None:
        ways["onnxruntime fp32 baseline"] = folder / "generator_fp32_baseline.onnx"
        exports["fp32 baseline"] = _export_baseline(
            args.baseline_src.resolve(), ways["pytorch"], ways["onnxruntime fp32 baseline"]
        )
        print(f"exported the baseline's fp32 in {exports['fp32 baseline']['seconds']:.0f} s", flush=True)
    rows = []
    for size in args.sizes:
        runs: dict[str, list[dict]] = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, path in ways.items():
                way = "pytorch" if name == "pytorch" else "onnx"
                runs[name].append(_child(way, path, size, args))
        medians = {name: statistics.median(r["seconds"] for r in values) for name, values in runs.items()}
        peaks = {name: max(r["peak_rss_gib"] for r in values) for name, values in runs.items()}
        row = {"size": size, "median_s": medians, "peak_rss_gib": peaks, "runs": runs}
        row["onnxruntime_over_pytorch"] = medians["onnxruntime fp32"] / medians["pytorch"]
        if args.profile:
            row["profile_median_s"] = {
                name: {
                    kind: statistics.median(r["profile"].get(kind, 0.0) for r in values)
                    for kind in sorted({k for r in values for k in r["profile"]})
                }
                for name, values in runs.items()
            }
            for name, kinds in row["profile_median_s"].items():
                print(f"  {name} {size}², profiled: " + ", ".join(f"{k} {v:.3f} s" for k, v in kinds.items()))
        rows.append(row)
        print(
            f"generator {size}²: "
            + ", ".join(f"{name} {medians[name]:.3f} s (peak RSS {peaks[name]:.2f} GiB)" for name in ways)
            + f"; onnxruntime / PyTorch {row['onnxruntime_over_pytorch']:.2f}",
            flush=True,
        )
    import onnxruntime

    from common import machine, write_results  # what every benchmark shares

    result = {
        "machine": {**machine(), "onnxruntime": onnxruntime.__version__},
        "args": {k: str(v) for k, v in vars(args).items()},
        "exports": exports,
        "rows": rows,
    }
    write_results(result, args.out or RESULTS / "onnx-cpu.json")


if __name__ == "__main__":
    main()
