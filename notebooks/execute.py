"""Execute the four notebooks in place and store their outputs (``make notebooks``), so a reader
on a forge sees the figures next to the code.

They run from the repository root on what this checkout has made: the newest quickstart model
(``make train``, trained first when there is none) for notebook 01, the embedded data for 02 and
03's first part, and the replicated ablation (``make study``, about an hour on two CPU cores) for
03's trained part and 04. A missing study stops before any notebook changes, with the command that
makes it. ``tests/test_notebooks.py`` checks that every stored notebook keeps its figures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
STUDY = Path("outputs/sweeps/ca_study")


def newest_quickstart() -> Path | None:
    runs = sorted(
        REPO.glob("outputs/quickstart/runs/*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime
    )
    return runs[-1].relative_to(REPO) if runs else None


def finished_study(folder: Path) -> bool:
    from deepfill.sweeps.jobs import finished_jobs

    return (REPO / folder).is_dir() and len(list(finished_jobs(REPO / folder))) >= 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make notebooks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="weights for notebook 01 (default: the newest quickstart model)")
    parser.add_argument("--sweep", type=Path, default=STUDY, help=f"the sweep of 03 and 04 (default {STUDY})")
    parser.add_argument("names", nargs="*", help="notebooks to run (file names; default: all four)")
    args = parser.parse_args(argv)
    selected = [p for p in NOTEBOOKS if not args.names or p.name in args.names or p.stem in args.names]
    if args.names and len(selected) != len(args.names):
        parser.error(f"names: expected some of {[p.name for p in NOTEBOOKS]}, got {args.names}")
    if not finished_study(args.sweep) and any(p.name[:3] in ("03_", "04_") for p in selected):
        print(
            f"make notebooks: error: --sweep: no finished sweep in {args.sweep}; run `make study` first "
            "(about an hour on two CPU cores) or pass another sweep folder",
            file=sys.stderr,
        )
        return 2
    weights = args.weights or newest_quickstart()
    if weights is None and any(p.name.startswith("01_") for p in selected):
        print("make notebooks: no quickstart model yet: training one (`make train`)", flush=True)
        subprocess.run(
            [str(Path(sys.executable).parent / "deepfill-train"), "experiment=quickstart"],
            check=True,
            cwd=REPO,
        )
        weights = newest_quickstart()
    env = {
        "DEEPFILL_NB_WEIGHTS": str(weights),
        "DEEPFILL_NB_ABLATION": str(args.sweep),
        "DEEPFILL_NB_SWEEP": str(args.sweep),
        "DEEPFILL_NB_METRIC": "val/psnr",  # what docs/sweeps.md reports (LPIPS needs downloaded weights)
    }
    os.environ.update(env)
    for path in selected:
        notebook = nbformat.read(path, as_version=4)
        NotebookClient(
            notebook,
            timeout=1800,
            kernel_name="python3",
            resources={"metadata": {"path": str(REPO)}},
            # JPEG figures: photos in PNG would make each stored notebook over a megabyte.
            extra_arguments=["--InlineBackend.figure_formats=jpeg"],
        ).execute()
        nbformat.write(notebook, path)
        figures = sum(
            bool({"image/png", "image/jpeg"} & set(o.get("data", {})))
            for c in notebook.cells
            for o in c.get("outputs", [])
        )
        print(f"{path.relative_to(REPO)}: executed, {figures} figure(s) stored")
    return 0


if __name__ == "__main__":
    sys.exit(main())
