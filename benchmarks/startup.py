"""How fast the commands answer: a one-line error for a missing file, ``--help`` of every
command, and ``deepfill-inpaint`` of one 512x512 image end to end against the generator's own
time. Every figure is a fresh process (the installed console script, as a user runs it), the
median of ``--repeats`` runs. ``--baseline-src`` (the ``src`` folder of another checkout) runs
that version's commands in the same rounds, alternating, so that both see the same machine.

    python benchmarks/startup.py                          # results/startup-cpu.json
    python benchmarks/startup.py --baseline-src ../old/src --repeats 5
    taskset -c 0 python benchmarks/startup.py --tag one-core

``-X importtime`` evidence is kept too: the slowest imports of ``import deepfill.cli.inpaint``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BIN = Path(sys.executable).parent
COMMANDS = (
    "deepfill-train",
    "deepfill-eval",
    "deepfill-inpaint",
    "deepfill-export",
    "deepfill-demo",
    "deepfill-convert",
    "deepfill-make-masks",
    "deepfill-sweep-table",
    "deepfill-selftest",
)


def _env(src: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if src:  # another checkout's package first on the path (its conf/ beside its src/)
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(args: list[str], src: str | None, cwd: Path, expect: int) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=_env(src), check=False)
    seconds = time.perf_counter() - start
    if result.returncode != expect:
        raise SystemExit(
            f"{' '.join(args)}: exit {result.returncode}, expected {expect}\n{result.stderr[-2000:]}"
        )
    return seconds, result.stdout + result.stderr


def _workspace(root: Path) -> dict[str, Path]:
    """The paper's generator (cnum 32, seeded random weights) as a .pt, one 512x512 photo-sized
    input and its mask."""
    import numpy as np
    import torch
    from PIL import Image

    from deepfill.models import InpaintGenerator

    torch.manual_seed(0)
    weights = root / "generator.pt"
    torch.save({"state_dict": InpaintGenerator().state_dict()}, weights)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)).save(root / "photo.png")
    hole = np.zeros((512, 512), np.uint8)
    hole[128:384, 128:384] = 255
    Image.fromarray(hole).save(root / "photo_mask.png")
    return {"weights": weights, "input": root / "photo.png", "mask": root / "photo_mask.png"}


def _import_evidence(module: str, src: str | None, top: int = 12) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        env=_env(src),
        check=True,
    )
    rows = []
    for line in result.stderr.splitlines():
        found = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if found:
            rows.append({"module": found.group(4), "cumulative_ms": int(found.group(2)) / 1000})
    return sorted(rows, key=lambda r: -r["cumulative_ms"])[:top]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline-src", default=None, help="src/ of another checkout, timed alongside")
    parser.add_argument("--tag", default="cpu", help="results file suffix: results/startup-<tag>.json")
    args = parser.parse_args()

    versions = {"this": None} | ({"baseline": args.baseline_src} if args.baseline_src else {})
    samples: dict[str, dict[str, list[float]]] = {v: {} for v in versions}
    generator_seconds: dict[str, list[float]] = {v: [] for v in versions}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = _workspace(root)
        cases = {
            "missing weights file (one-line error)": (
                [str(BIN / "deepfill-inpaint"), f"weights={root}/missing.pt", f"input={files['input']}"],
                2,
            ),
            **{f"{c} --help": ([str(BIN / c), "--help"], 0) for c in COMMANDS},
            "python -c 'import torch'": ([sys.executable, "-c", "import torch"], 0),
        }
        for round_ in range(args.repeats):
            for version, src in versions.items():
                for name, (command, expect) in cases.items():
                    seconds, _ = _run(command, src, root, expect)
                    samples[version].setdefault(name, []).append(seconds)
                out = root / f"out-{version}-{round_}"
                seconds, output = _run(
                    [
                        str(BIN / "deepfill-inpaint"),
                        f"weights={files['weights']}",
                        f"input={files['input']}",
                        f"mask_path={files['mask']}",
                        f"output={out}",
                        "device=cpu",
                        f"hydra.run.dir={root}/run-{version}-{round_}",
                    ],
                    src,
                    root,
                    0,
                )
                samples[version].setdefault("deepfill-inpaint 512x512 .pt, end to end", []).append(seconds)
                found = re.search(r"generator time: ([\d.]+) s", output)
                if found:
                    generator_seconds[version].append(float(found.group(1)))
            print(f"round {round_ + 1}/{args.repeats} done", flush=True)

    results: dict = {"repeats": args.repeats, "cpu": _cpu(), "versions": {}}
    for version, src in versions.items():
        medians = {name: statistics.median(times) for name, times in samples[version].items()}
        entry = {"median_s": medians, "runs_s": samples[version]}
        if generator_seconds[version]:
            generator = statistics.median(generator_seconds[version])
            # What the command spends besides Python and PyTorch loading, the command's own
            # start (the missing-file case: Hydra, the config) and the generator.
            overhead = (
                medians["deepfill-inpaint 512x512 .pt, end to end"]
                - generator
                - medians["python -c 'import torch'"]
                - medians["missing weights file (one-line error)"]
            )
            entry |= {"generator_s": generator, "inpaint_overhead_s": overhead}
        entry["slowest_imports_of_deepfill.cli.inpaint"] = _import_evidence("deepfill.cli.inpaint", src)
        results["versions"][version] = entry
    out = RESULTS / f"startup-{args.tag}.json"
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    for version, entry in results["versions"].items():
        print(f"\n{version}:")
        for name, value in entry["median_s"].items():
            print(f"  {value:6.2f} s  {name}")
        if "generator_s" in entry:
            overhead = entry["inpaint_overhead_s"]
            print(f"  generator {entry['generator_s']:.2f} s; inpaint overhead {overhead:.2f} s")
    print(f"results written to {out}")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
