"""The guides cannot rot: every command in the code blocks of README.md and docs/*.md runs here.

The pages are read in :data:`PAGES` order, which puts the commands that make files (a training
run, converted weights, mask sets) before those that use them; a command that appears on two pages
runs once, where it first appears.

Commands run with tiny overrides appended (a small model, a few batches), on a workspace that
holds what the README's examples name (photos/, photo.jpg, a folder laid out like the released
checkpoints, a /data folder with flists). `make` commands are resolved to the exact command the
Makefile runs (`make -n`). Commands that need GPUs or a SLURM cluster are composed instead of
run (`--cfg job`), so their groups and keys are still checked. `make test` is this suite.
"""

from __future__ import annotations

import csv
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import onnx_graph
from helpers.commands import call_cli
from helpers.paths import GOLDENS, GOLDENS_V2, REPO
from helpers.tiny import TINY, TINY_V2

README = REPO / "README.md"
# Training and conversion first: later pages use the checkpoint, weights and masks they write.
PAGES = [
    REPO / "docs" / f"{name}.md"
    for name in (
        "training",
        "official-weights",
        "evaluation",
        "inpainting",
        "deployment",
        "sweeps",
        "errors",
        "development",
    )
] + [README]
BIN = Path(sys.executable).parent

TINY_TRAIN = [
    *TINY,
    "data.val.length=2",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
]
TINY_TRAIN_V2 = [*TINY_V2, *TINY_TRAIN[len(TINY) :]]
# Sweep presets: pin all but one swept key (command-line values beat the preset's grid).
TINY_SWEEPS = {
    "ca_study": ["replicates=2", "+arm=attention_k3,no_attention"],
    "quickstart_coarse": ["replicates=1"],
    "quickstart_width": ["replicates=1", "+quickstart_width=cnum16_30,cnum12_30"],
    # v1 against v2: only the keys both families have (the quickstart trains no critic).
    "family_study": ["replicates=1"],
    "attention": [
        "model.generator.attention.ksize=3",
        "model.generator.attention.rate=2",
        "model.generator.attention.fuse=true",
    ],
}
TINY_EVAL = ["limit=2", "batch_size=2", "lpips=false"]
NEEDS_CLUSTER = ("trainer=gpu", "trainer=ddp", "launcher=local_gpus", "launcher=slurm")


def code_blocks(language: str, pages: list[Path] = PAGES) -> list[str]:
    return [
        block
        for page in pages
        for block in re.findall(rf"^```{language}\n(.*?)^```", page.read_text(), flags=re.S | re.M)
    ]


def page_commands(pages: list[Path] = PAGES) -> list[str]:
    """Every command line of the pages' bash blocks, in order, each once."""
    commands = []
    for block in code_blocks("bash", pages):
        for line in block.splitlines():
            tokens = shlex.split(line, comments=True)
            if tokens and shlex.join(tokens) not in commands:
                commands.append(shlex.join(tokens))
    return commands


# `make test` is this suite: checked by what it runs (below), not run from inside itself.
COMMANDS = [c for c in page_commands() if c != "make test"]


def test_commands_are_found_and_all_are_project_commands() -> None:
    assert set(PAGES[:-1]) == set((REPO / "docs").glob("*.md"))  # a new page is added to PAGES
    assert len(COMMANDS) >= 30
    assert page_commands([README])[:2] == ["make train", "make test"]  # the two commands
    for command in COMMANDS:
        program = command.split()[0]
        assert program == "make" or program.startswith("deepfill-"), command


def test_the_readme_is_read_in_five_minutes_and_links_only_to_what_exists() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    for page in [README, *PAGES[:-1]]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith(("http://", "https://")):
                assert (page.parent / target).exists(), f"{page.name} links to a missing {target}"
        for anchor_page, anchor in re.findall(r"\]\(([^)#\s]*)#([^)]+)\)", page.read_text()):
            linked = page.parent / anchor_page if anchor_page else page
            headings = re.findall(r"^#+ (.+)$", linked.read_text(), flags=re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
            assert anchor in slugs, f"{page.name} links to a missing heading {anchor_page}#{anchor}"


def test_make_test_runs_this_suite_without_the_slow_and_browser_tests() -> None:
    dry = subprocess.run(["make", "-n", "-C", str(REPO), "test"], capture_output=True, text=True, check=True)
    (line,) = [line for line in dry.stdout.splitlines() if " -m pytest " in line]
    tokens = shlex.split(line)
    assert Path(tokens[0]).parent.parent.name == ".venv"  # the environment make creates
    assert tokens[tokens.index("-m", 2) + 1] == "not slow and not browser"
    # No path narrows it: pytest collects tests/ (pyproject's testpaths), this file included.
    assert not [t for t in tokens[3:] if not t.startswith("-") and Path(REPO, t).exists()]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    """Files the pages' examples refer to, and what earlier commands leave for later ones."""
    ws = tmp_path_factory.mktemp("docs")
    rng = np.random.default_rng(0)

    def photo(path: Path, size=(96, 128)) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)

    (ws / "masks").mkdir()
    for i in range(3):
        photo(ws / "photos" / f"p{i}.jpg")
        mask = np.zeros((96, 128), np.uint8)
        mask[20 + 5 * i : 60, 30:90] = 255
        Image.fromarray(mask).save(ws / "masks" / f"p{i}.png")
    for split in ("train", "val"):
        for i in range(3):
            photo(ws / "my_photos" / split / f"{i}.jpg")
    photo(ws / "photo.jpg", (120, 150))
    mask = np.zeros((120, 150), np.uint8)
    mask[30:80, 40:100] = 255
    Image.fromarray(mask).save(ws / "photo_mask.png")
    rgba = np.dstack(
        [rng.integers(0, 255, (100, 140, 3), dtype=np.uint8), np.full((100, 140), 255, np.uint8)]
    )
    rgba[30:70, 50:100, 3] = 0  # the hole: transparent pixels
    Image.fromarray(rgba, "RGBA").save(ws / "cutout.png")
    for dataset in ("places2", "celebahq"):
        lines = []
        for i in range(4):
            photo(ws / "data" / dataset / "images" / f"{i}.jpg", (80, 96))
            lines.append(f"images/{i}.jpg")
        for split in ("train", "val"):
            (ws / "data" / dataset / f"{split}.flist").write_text("\n".join(lines) + "\n")
    # Laid out like a released checkpoint folder (here with the weights of the official goldens).
    for name, goldens in (
        ("path/to/release_places2_256", GOLDENS),
        ("release_places2_256", GOLDENS),
        ("path/to/release_places2_256_deepfill_v2", GOLDENS_V2),
    ):
        (ws / name).parent.mkdir(parents=True, exist_ok=True)
        (ws / name).symlink_to(goldens, target_is_directory=True)
    return {"dir": ws, "ckpt": None}


def resolve_make(command: str) -> list[str]:
    """The deepfill command a `make ...` line of the pages runs."""
    tokens = shlex.split(command)
    dry = subprocess.run(
        ["make", "-n", "-C", str(REPO), *tokens[1:]], capture_output=True, text=True, check=True
    )
    lines = [line for line in dry.stdout.splitlines() if "/deepfill-" in line.split(" ", 1)[0]]
    assert len(lines) == 1, dry.stdout
    resolved = shlex.split(lines[0])
    return [str(BIN / Path(resolved[0]).name), *resolved[1:]]


def substitute(tokens: list[str], ws: dict) -> list[str]:
    """Point the pages' placeholders at the workspace (other paths are relative to it: the cwd)."""
    out = []
    for token in tokens:
        key, sep, value = token.partition("=")
        if sep and value == "/data":
            token = f"{key}={ws['dir'] / 'data'}"
        elif sep and "checkpoints/last.ckpt" in value and ("..." in value or "<" in value):
            assert ws["ckpt"], "a training command must come before the commands that use its checkpoint"
            token = f"{key}={ws['ckpt']}"
        out.append(token)
    return out


def tiny(tokens: list[str], ws: dict) -> list[str]:
    program = Path(tokens[0]).name
    logs = f"paths.log_dir={ws['dir'] / 'outputs'}"
    if program == "deepfill-train":
        v2 = any(
            t in ("model=deepfill_v2", *(f"experiment={e}_v2" for e in ("quickstart", "places2", "celebahq")))
            for t in tokens
        )
        extra = [*(TINY_TRAIN_V2 if v2 else TINY_TRAIN), logs]
        if "+sweep=family_study" in tokens:  # both families: the keys they share
            extra = [t for t in extra if "_critic." not in t]
        if any(t.startswith("data=") and t != "data=sample" for t in tokens):
            extra.remove("data.val.length=2")  # a key of the embedded sample data only
        for token in tokens:
            if token.startswith("+sweep="):
                extra += TINY_SWEEPS.get(token.split("=", 1)[1], [])
        return [*tokens, *extra]
    if program == "deepfill-eval":
        return [*tokens, *TINY_EVAL, logs]
    if program == "deepfill-inpaint":
        return [*tokens, logs]
    if program == "deepfill-make-masks":
        return [t if t != "1000" else "4" for t in tokens]
    if program == "deepfill-selftest":
        small = ["--sizes", "64", "--train-size", "64", "--train-batch", "1", "--precisions", "float32"]
        return [*tokens, *small, "--out", str(ws["dir"] / "selftest")]
    return tokens


def check_outputs(tokens: list[str], result, ws: dict) -> None:
    program = Path(tokens[0]).name
    out = result.stdout
    if program == "deepfill-train" and "-m" in tokens:
        table = re.search(r"sweep results: \S+ and (\S+)results\.csv", out)
        assert table, out[-2000:]
        with open(f"{table.group(1)}results_jobs.csv") as f:
            jobs = list(csv.DictReader(f))
        assert jobs and all(r["status"] == "finished" and float(r["val/psnr"]) > 0 for r in jobs)
        with open(f"{table.group(1)}results.csv") as f:
            settings = list(csv.DictReader(f))
        assert sum(int(r["n"]) for r in settings) == len(jobs)
        assert Path(f"{table.group(1)}results.png").is_file()
    elif program == "deepfill-train":
        match = re.search(r"checkpoints: .*?(\S+last\.ckpt)", out)
        assert match and Path(match.group(1)).is_file(), out[-2000:]
        ws["ckpt"] = ws["ckpt"] or match.group(1)
    elif program == "deepfill-eval":
        match = re.search(r"tables written to (\S+) and (\S+)", out)
        assert match and "| deepfill |" in Path(match.group(2)).read_text(), out[-2000:]
    elif program == "deepfill-inpaint":
        match = re.search(r"wrote (\d+) inpainted image\(s\) to (\S+)", out)
        assert match and int(match.group(1)) >= 1, out[-2000:]
        assert len(list((ws["dir"] / match.group(2)).glob("*.png"))) >= int(match.group(1))
    elif program == "deepfill-export":
        output = next(t.split("=", 1)[1] for t in tokens if t.startswith("output="))
        assert Path(ws["dir"] / output).is_file() and "onnxruntime matches PyTorch" in out, out[-2000:]
        if "precision=fp16" in tokens:  # half weights, the attention's softmax kept in float32
            import onnx

            model = onnx.load(str(ws["dir"] / output))
            graph, softmax = next((g, n) for g, n in onnx_graph.nodes(model.graph) if n.op_type == "Softmax")
            assert onnx_graph.elem_type(graph, softmax.input[0]) == onnx.TensorProto.FLOAT
            convs = [i for i in model.graph.initializer if len(i.dims) == 4]
            assert convs and all(i.data_type == onnx.TensorProto.FLOAT16 for i in convs)
    elif program == "deepfill-convert":
        assert Path(ws["dir"] / tokens[2]).is_file(), out
    elif program == "deepfill-make-masks":
        assert len(list((ws["dir"] / tokens[1]).glob("*.png"))) == 4, out
    elif program == "deepfill-selftest":
        assert out.strip().splitlines()[-1].startswith("deepfill-selftest: PASS"), out[-2000:]
        assert (ws["dir"] / "selftest" / "report.md").is_file()


@pytest.mark.parametrize("command", COMMANDS)
def test_command_runs(command, workspace) -> None:
    tokens = shlex.split(command)
    tokens = resolve_make(command) if tokens[0] == "make" else [str(BIN / tokens[0]), *tokens[1:]]
    tokens = substitute(tokens, workspace)
    # Each command runs in this process, through its console entry point (helpers.commands.call_cli):
    # what is checked is what it does and prints, not the interpreter's start.
    name, cwd = Path(tokens[0]).name, workspace["dir"]
    if name == "deepfill-demo":
        # A server that runs until stopped (tests/test_demo.py starts and drives it): check
        # that the command line composes.
        result = call_cli(name, *tokens[1:], "--cfg", "job", cwd=cwd)
        assert result.returncode == 0 and "port:" in result.stdout, result.stderr[-2000:]
        return
    if any(token in NEEDS_CLUSTER for token in tokens):
        # GPUs / SLURM: compose the job's config (groups, keys, interpolations) without running it.
        tokens = [t for t in tokens if t != "-m"] + ["--cfg", "job"]
        result = call_cli(name, *tokens[1:], cwd=cwd)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "generator:" in result.stdout
        return
    tokens = tiny(tokens, workspace)
    result = call_cli(name, *tokens[1:], cwd=cwd)
    assert result.returncode == 0, f"{shlex.join(tokens)}\n{result.stderr[-3000:]}"
    check_outputs(tokens, result, workspace)


def test_python_examples_run(workspace) -> None:
    blocks = code_blocks("python")
    assert blocks
    for code in blocks:
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=workspace["dir"], timeout=300
        )
        assert result.returncode == 0, f"{code}\n{result.stderr[-2000:]}"
