"""The Python API against the commands' runtime, side by side.

A user's script (the README's snippet, a notebook, a research loop) runs the public API in a
plain process; every command first calls ``deepfill.utils.cpu.configure_cpu()`` (subnormal
floats flushed to zero, freed memory kept for reuse). This times the same work both ways, each
in its own fresh process, in alternating rounds so that both see the same machine state; the
ratio is what carries to other machines. ``--baseline-src`` (the ``src`` folder of another
checkout) adds that version's plain API to every round.

    python benchmarks/api.py                       # generator 256², 512²; a training iteration
    python benchmarks/api.py --work generator --sizes 512 1024 --weights model.ckpt
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from common import timed_generator_calls

RESULTS = Path(__file__).resolve().parent / "results"
SRC = Path(__file__).resolve().parents[1] / "src"

# The child programs: only the public API, preceded by configure_cpu() when {commands}.
_PRELUDE = """
import json, statistics, time, torch
torch.set_num_threads({threads})
chunk_bytes = None
if {commands}:
    from deepfill.models import CPU_CHUNK_BYTES_REUSED
    from deepfill.utils.cpu import configure_cpu
    chunk_bytes = CPU_CHUNK_BYTES_REUSED if configure_cpu() else None
"""

_GENERATOR = (
    """
from deepfill.models import InpaintGenerator, set_cpu_chunk_bytes
torch.manual_seed(0)
weights = {weights!r}
if weights:
    from deepfill.inference import load_generator
    generator = load_generator(weights, cpu_chunk_bytes=chunk_bytes)
else:
    generator = set_cpu_chunk_bytes(InpaintGenerator(), chunk_bytes)
generator.eval()
"""
    + timed_generator_calls("torch.inference_mode()")
    + """print(json.dumps(statistics.median(times)))
"""
)

# One training iteration of the paper's schedule: 5 critic batches, then the generator's batch,
# through Lightning as the README's Python-API training example runs it.
_TRAINING = """
import pytorch_lightning as pl
from deepfill.data import masks
from deepfill.data.datamodule import InpaintDataModule
from deepfill.data.datasets import SampleImages
from deepfill.models import GlobalCritic, InpaintGenerator, LocalCritic
from deepfill.training.module import DeepFillModule
size, batch, per_round, rounds = {size}, {batch}, 6, {repeats}
torch.manual_seed(0)
module = DeepFillModule(InpaintGenerator(), GlobalCritic(size), LocalCritic(size // 2), n_critic=5)
data = InpaintDataModule(
    train=SampleImages("train", size, length=batch * per_round * (rounds + 1)),
    train_masks=masks.rectangle, eval_masks=masks.centered_rectangle, batch_size=batch, num_workers=0,
)
times = []
class Timer(pl.Callback):
    def on_train_batch_start(self, *args):
        self.start = time.perf_counter()
    def on_train_batch_end(self, *args):
        times.append(time.perf_counter() - self.start)
trainer = pl.Trainer(
    accelerator="cpu", max_epochs=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
    enable_progress_bar=False, enable_model_summary=False, callbacks=[Timer()],
)
trainer.fit(module, data)
iterations = [sum(times[per_round * r : per_round * (r + 1)]) for r in range(1, rounds + 1)]
print(json.dumps(statistics.median(iterations)))
"""


def _child(work: str, src: Path, commands: bool, args: argparse.Namespace, size: int) -> float:
    body = _GENERATOR if work == "generator" else _TRAINING
    code = (_PRELUDE + body).format(
        threads=args.threads,
        commands=commands,
        size=size,
        repeats=args.repeats,
        batch=args.batch,
        weights=str(args.weights) if args.weights else "",
    )
    env = {**os.environ, "PYTHONPATH": str(src)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise SystemExit(f"benchmark child ({work} {size}², src {src}) failed:\n{run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    work = ("generator", "training")
    parser.add_argument("--work", nargs="+", default=list(work), choices=work)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="generator sizes")
    parser.add_argument("--train-size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4, help="training batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (iterations) per process")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of fresh processes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", type=Path, default=None, help="trained weights for the generator")
    parser.add_argument("--baseline-src", type=Path, default=None, help="another checkout's src folder")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = parser.parse_args()
    if args.baseline_src is not None and not (args.baseline_src / "deepfill" / "__init__.py").is_file():
        raise SystemExit(
            f"--baseline-src {args.baseline_src}: expected a src folder with deepfill/__init__.py in it"
        )

    ways = {"api": (SRC, False), "commands": (SRC, True)}
    if args.baseline_src is not None:
        ways["baseline api"] = (args.baseline_src, False)
    rows = []
    cases = [("generator", s) for s in args.sizes if "generator" in args.work]
    cases += [("training", args.train_size)] if "training" in args.work else []
    for work, size in cases:
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, (src, commands) in ways.items():
                times[name].append(_child(work, src, commands, args, size))
        medians = {name: statistics.median(values) for name, values in times.items()}
        row = {"work": work, "size": size, "median_s": medians, "times_s": times}
        row["api_over_commands"] = medians["api"] / medians["commands"]
        rows.append(row)
        unit = "s per iteration (5 critic + 1 generator batch)" if work == "training" else "s"
        print(
            f"{work} {size}²: "
            + ", ".join(f"{name} {value:.3f}" for name, value in medians.items())
            + f" {unit}; API / commands {row['api_over_commands']:.2f}",
            flush=True,
        )
    from common import machine, write_results  # what every benchmark shares

    result = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    write_results(result, args.out or RESULTS / "api-cpu.json")


if __name__ == "__main__":
    main()
