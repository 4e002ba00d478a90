"""Bad input to every command, as a user would give it: each case must end with exit status 2 and
one line ``<command>: error: ...`` naming the file, key or value, never a traceback; and what was
already written must stay whole.

The cases run each command's entry point in this process (:func:`helpers.commands.call_cli`): the logic
under test is the command's, and a new process per case would spend most of its time importing.
A sample of them also runs as real processes of the installed console scripts, which is what a
user's shell sees (exit status, stderr)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from deepfill.models import InpaintGenerator
from helpers.commands import call_cli, run_cli
from helpers.run_if import RunIf

NO_GPU = RunIf(no_gpu=True)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace of good and bad files: weights, images, masks, checkpoints."""
    root = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    torch.save({"state_dict": InpaintGenerator(cnum=8).state_dict()}, root / "w.pt")
    (root / "garbage.pt").write_bytes(b"not a checkpoint " * 64)
    (root / "garbage.npz").write_bytes(b"PK\x03\x04 not a zip")
    (root / "trunc.ckpt").write_bytes(b"PK\x03\x04" + bytes(60))
    (root / "afile").write_text("a file, not a folder")
    (root / "fake.onnx").write_bytes(b"not an ONNX model")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
    for folder in ("imgs", "trunc", "dup", "fake", "masks_one", "masks_empty", "masks_trunc", "emptydir"):
        (root / folder).mkdir()
    Image.fromarray(image).save(root / "imgs" / "a.png")
    Image.fromarray(image).save(root / "imgs" / "b.jpg")
    data = (root / "imgs" / "a.png").read_bytes()
    (root / "trunc" / "b.png").write_bytes(data[: len(data) // 2])
    Image.fromarray(image).save(root / "dup" / "x.jpg")
    Image.fromarray(image).save(root / "dup" / "x.jpeg")
    for i in range(4):
        (root / "fake" / f"{i}.jpg").write_text("not an image")
    hole = np.zeros((64, 80), np.uint8)
    hole[20:40, 20:50] = 255
    Image.fromarray(hole).save(root / "mask.png")
    Image.fromarray(hole).save(root / "masks_one" / "000000.png")
    Image.fromarray(hole).save(root / "masks_trunc" / "000000.png")
    (root / "masks_trunc" / "000001.png").write_bytes(data[: len(data) // 2])
    Image.fromarray(hole).save(root / "masks_empty" / "000000.png")
    Image.fromarray(np.zeros_like(hole)).save(root / "masks_empty" / "000001.png")
    Image.fromarray(np.full_like(hole, 100)).save(root / "grey_mask.png")
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(root / "small_mask.png")
    return root


def _resume_checkpoint(ws: Path) -> Path:
    """A training checkpoint of a cnum-16 model: state_dict and hyper-parameters as saved."""
    from helpers.tiny import compose_cfg

    path = ws / "cnum16.ckpt"
    if not path.exists():
        cfg = compose_cfg(["debug=fast_dev_run", "model.generator.cnum=16"], ws / "compose")
        module = instantiate(cfg.model)
        torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


INPAINT = "deepfill-inpaint"
EVAL = "deepfill-eval"
TRAIN = "deepfill-train"
DEMO = "deepfill-demo"
EXPORT = "deepfill-export"
TRAIN_FAST = ("debug=fast_dev_run", "logger=csv", "data.batch_size=1")

# (command, arguments, what the error line must contain); {ws} is the workspace.
CASES = [
    (INPAINT, ["input={ws}/imgs/a.png"], "weights: required"),
    (INPAINT, ["weights={ws}/nowhere.pt", "input={ws}/imgs"], "weights: no such file or folder"),
    (INPAINT, ["weights={ws}/garbage.pt", "input={ws}/imgs/a.png", "mask_path={ws}/mask.png"], "garbage.pt is not a readable PyTorch checkpoint"),
    (INPAINT, ["weights={ws}/trunc.ckpt", "input={ws}/imgs/a.png", "mask_path={ws}/mask.png"], "trunc.ckpt is not a readable PyTorch checkpoint"),
    (INPAINT, ["weights={ws}/garbage.npz", "input={ws}/imgs/a.png", "mask_path={ws}/mask.png"], "garbage.npz: not a readable .npz"),
    (INPAINT, ["weights={ws}/nowhere.pt", "input={ws}/imgs", "compile=maybe"], "compile: expected true or false, got 'maybe'"),
    (INPAINT, ["weights={ws}/w.pt", "input={ws}/dup", "mask_path={ws}/imgs"], "would both be written as x.png"),
    (INPAINT, ["weights={ws}/emptydir", "input={ws}/imgs/a.png", "mask_path={ws}/mask.png"], "weights: the folder {ws}/emptydir holds no weights"),
    (INPAINT, ["weights={ws}/w.pt", "input={ws}/été 2024/a(1), b=c #2.jpg"], "input: no such file or folder: {ws}/été 2024/a(1), b=c #2.jpg"),
    (INPAINT, ["weights={ws}/w.pt", "input={ws}/trunc/b.png", "mask_path={ws}/mask.png"], "b.png: OSError: image file is truncated"),
    (INPAINT, ["weights={ws}/w.pt", "input={ws}/imgs/a.png", "mask_path={ws}/mask.png", "output={ws}/afile"], "output: {ws}/afile is a file"),
    (INPAINT, ["weights={ws}/w.pt", "input={ws}/imgs/a.png", "mask_path={ws}/mask.png", "output={ws}/afile/sub"], "lies under the file {ws}/afile"),
    (INPAINT, ["weights={ws}/w.pt", "input={ws}/imgs", "mask_path={ws}/imgs", "output={ws}/result.png"], "output: {ws}/result.png looks like a file name"),
    (INPAINT, ["weights={ws}/w.pt", "input={ws}/imgs/a.png", "mask_path={ws}/mask.png", "output={ws}/r.jpg"], "use r.png"),
    (INPAINT, ["weights={ws}/w.pt", "input={ws}/imgs/a.png", "mask_path={ws}/grey_mask.png"], "grey_mask.png marks no hole"),
    (INPAINT, ["weights={ws}/w.pt", "input={ws}/imgs/a.png", "mask_path={ws}/small_mask.png"], "is 10x10 but image"),
    (INPAINT, ["weights={ws}/w.pt", "input={ws}/imgs/a.png"], "a.png: no mask given"),
    (INPAINT, ["weights={ws}/w.pt", "input={ws}/imgs/a.png", "mask_pth={ws}/mask.png"], "mask_pth: unknown key (did you mean 'mask_path'?)"),
    pytest.param(INPAINT, ["weights={ws}/w.pt", "input={ws}/imgs/a.png", "mask_path={ws}/mask.png", "device=gpu"], "device=cuda: no CUDA GPU", marks=NO_GPU),
    (INPAINT, ["weights={ws}/w.pt", "input={ws}/imgs/a.png", "mask_path={ws}/mask.png", "device=tpu9"], "device: unknown device 'tpu9'"),
    (EVAL, ["weights={ws}/w.pt", "data=folder", "data.val.root={ws}/fake", "lpips=false"], "4 of 4 images are unreadable"),
    (EVAL, ["weights={ws}/w.pt", "data=folder", "data.val.root={ws}/imgs", "lpips=false", "limit=0"], "limit: must be a positive number"),
    (EVAL, ["weights={ws}/w.pt", "data=folder", "data.val.root={ws}/imgs", "lpips=false", "limit=-1"], "limit: must be a positive number"),
    (INPAINT, ["weights={ws}/w.pt", "input={ws}/imgs/a.png", "mask_path={ws}/mask.png", "precision=fp16"], "precision: must be one of fp32, bf16, got 'fp16'"),
    (EVAL, ["weights={ws}/w.pt", "data=folder", "data.val.root={ws}/imgs", "lpips=false", "precision=half"], "precision: must be one of fp32, bf16, got 'half'"),
    (DEMO, ["port=abc"], "port: must be a port number (0-65535; 0 picks a free one), got 'abc'"),
    (DEMO, ["weights={ws}/nowhere.pt"], "weights: no such file or folder"),
    (DEMO, ["weights={ws}/garbage.pt"], "garbage.pt is not a readable PyTorch checkpoint"),
    (EVAL, ["weights={ws}/w.pt", "data=folder", "data.val.root={ws}/imgs", "lpips=false", "masks_dir={ws}/masks_one"], "masks_dir: 1 mask file(s) for 2 images"),
    (EVAL, ["weights={ws}/w.pt", "data=folder", "data.val.root={ws}/imgs", "lpips=false", "masks_dir={ws}/masks_empty"], "masks_empty/000001.png marks no hole"),
    (EVAL, ["weights={ws}/w.pt", "data=folder", "data.val.root={ws}/imgs", "lpips=false", "masks_dir={ws}/masks_trunc"], "000001.png: not a readable mask image"),
    (EVAL, ["weights={ws}/w.pt", "data=folder", "data.val.root={ws}/imgs", "lpips=false", "baselines=[telea]"], "baselines: unknown baseline 'telea'"),
    (EVAL, ["weights={ws}/w.pt", "data=folder", "data.val.root={ws}/nowhere", "lpips=false"], "image folder not found: {ws}/nowhere"),
    (TRAIN, ["trainer=gpux"], "Could not find 'trainer/gpux'; available: auto, cpu"),
    (TRAIN, ["data.batch_sze=3"], "data.batch_sze: unknown key (did you mean 'data.batch_size'?)"),
    (TRAIN, ["trainer.limit_trian_batches=2"], "trainer.limit_trian_batches: unknown key (did you mean 'trainer.limit_train_batches'?)"),
    (TRAIN, ["-m", "replicate=2"], "replicate: unknown key (did you mean 'replicates'?)"),
    (TRAIN, ["-m", "wandb_notes=2"], "wandb_notes: unknown key (to add a new key write +wandb_notes=...)"),
    (TRAIN, ["-m", "data.batch_sze=2,3"], "data.batch_sze: unknown key (did you mean 'data.batch_size'?)"),
    (TRAIN, ["+model.generator.attention.kszie=5"], "model.generator.attention.kszie: unknown key for ContextualAttention (did you mean 'ksize'?)"),
    (TRAIN, ["model.generator.cnum=abc"], "model.generator.cnum: expected an integer, got 'abc'"),
    (TRAIN, ["model.compile=maybe"], "model.compile: expected true or false, got 'maybe'"),
    (TRAIN, ["callbacks.signal.requeue_signal=FOO"], "callbacks.signal.requeue_signal: 'FOO' is not a signal of this system"),
    pytest.param(TRAIN, ["trainer=gpu"], "trainer.accelerator=gpu: no CUDA GPU", marks=NO_GPU),
    (TRAIN, ["ckpt_path={ws}/trunc.ckpt"], "trunc.ckpt is not a readable PyTorch checkpoint"),
    (TRAIN, ["ckpt_path={ws}/cnum16.ckpt", "model.generator.cnum=8"], "trained with generator.cnum: 16 in the file, 8 here"),
    (TRAIN, ["data=folder", "data.train.root={ws}/fake", "data.val.root={ws}/imgs"], "4 of 4 images are unreadable"),
    (TRAIN, ["experiment=quickstart", "data=folder", "data.train.root={ws}/fake", "data.val.root={ws}/imgs"], "4 of 4 images are unreadable"),
    (INPAINT, ["weights={ws}/fake.onnx", "input={ws}/imgs/a.png", "mask_path={ws}/mask.png"], "fake.onnx is not a readable ONNX model"),
    (INPAINT, ["weights={ws}/fake.onnx", "input={ws}/imgs/a.png", "compile=true"], "compile: an .onnx model runs in onnxruntime"),
    (INPAINT, ["weights={ws}/fake.onnx", "input={ws}/imgs/a.png", "precision=bf16"], "precision: an .onnx model runs in the precision it was exported in"),
    (EXPORT, ["output={ws}/m.onnx"], "weights: required"),
    (EXPORT, ["weights={ws}/w.pt", "output={ws}/model.txt"], "output: expected a file name ending in .onnx, got {ws}/model.txt"),
    (EXPORT, ["weights={ws}/w.pt", "output={ws}/afile/model.onnx"], "output: {ws}/afile is a file; expected a folder"),
    (EXPORT, ["weights={ws}/garbage.pt", "output={ws}/m.onnx"], "garbage.pt is not a readable PyTorch checkpoint"),
    (EXPORT, ["weights={ws}/fake.onnx", "output={ws}/m.onnx"], "weights: {ws}/fake.onnx is an export already"),
    (EXPORT, ["weights={ws}/w.pt", "output={ws}/m.onnx", "precision=fp8"], "precision: must be one of fp32, fp16, int8, got 'fp8'"),
    (EXPORT, ["weights={ws}/w.pt", "output={ws}/m.onnx", "check_size=[60,64]"], "check_size: must be multiples of 8, got (60, 64)"),
    (EXPORT, ["weights={ws}/w.pt", "output={ws}/m.onnx", "check_size=256"], "check_size: expected [height, width], got 256"),
    (EXPORT, ["weights={ws}/w.pt", "output={ws}/m.onnx", "attention_block_mb=0"], "attention_block_mb: expected a number of MiB > 0, got 0"),
    ("deepfill-convert", ["{ws}/garbage.pt", "{ws}/out.pt"], "garbage.pt is not a readable PyTorch checkpoint"),
    ("deepfill-convert", ["{ws}/garbage.npz", "{ws}/imgs"], "output: {ws}/imgs is a folder"),
    ("deepfill-make-masks", ["{ws}/masks_new", "--size", "0", "64"], "size must be at least 16x16, got 0x64"),
    ("deepfill-make-masks", ["{ws}/masks_new", "--count", "0"], "count must be >= 1, got 0"),
    ("deepfill-make-masks", ["{ws}/afile/masks"], "out: {ws}/afile/masks lies under the file"),
]  # fmt: skip


def _id(param) -> str:
    values = param.values if hasattr(param, "values") else param
    return f"{values[0].removeprefix('deepfill-')}:{values[2][:40]}"


def _assert_one_line_error(result, command: str, expected: str) -> None:
    err = result.stderr
    assert "Traceback" not in err and "Traceback" not in result.stdout, err[-3000:]
    assert result.returncode == 2, err[-3000:]
    ours = [line for line in err.splitlines() if line.startswith(f"{command}: error:")]
    assert len(ours) == 1, err[-3000:]
    assert err.strip().splitlines()[-1] == ours[0]
    assert expected in ours[0], ours[0]


@pytest.mark.parametrize(("command", "args", "expected"), CASES, ids=[_id(c) for c in CASES])
def test_bad_input_ends_in_one_line(ws, tmp_path, command, args, expected) -> None:
    args = [a.format(ws=ws) for a in args]
    if command == TRAIN:
        if any("cnum16" in a for a in args):
            _resume_checkpoint(ws)
        args = [*TRAIN_FAST, *args]
    if command in (INPAINT, EVAL, TRAIN, EXPORT):
        args = [*args, f"hydra.run.dir={tmp_path}/run"]
    before = sorted(p.relative_to(ws).as_posix() for p in ws.rglob("*"))
    result = call_cli(command, *args, cwd=tmp_path)
    _assert_one_line_error(result, command, expected.format(ws=ws))
    after = sorted(p.relative_to(ws).as_posix() for p in ws.rglob("*"))
    # Nothing was written into the workspace: no half files, no temporaries, no empty folders.
    assert after == before


# One case per command and kind of mistake, as real processes of the console scripts.
PROCESS_CASES = [
    (INPAINT, ["weights={ws}/nowhere.pt", "input={ws}/imgs"], "weights: no such file or folder"),
    (INPAINT, ["weights={ws}/garbage.pt", "input={ws}/imgs/a.png", "mask_path={ws}/mask.png"], "garbage.pt is not a readable PyTorch checkpoint"),
    (TRAIN, ["data.batch_sze=3"], "data.batch_sze: unknown key (did you mean 'data.batch_size'?)"),
    (TRAIN, ["model.generator.cnum=abc"], "model.generator.cnum: expected an integer, got 'abc'"),
    (EVAL, ["weights={ws}/w.pt", "data=folder", "data.val.root={ws}/nowhere", "lpips=false"], "image folder not found: {ws}/nowhere"),
    (EXPORT, ["weights={ws}/w.pt", "output={ws}/model.txt"], "output: expected a file name ending in .onnx, got {ws}/model.txt"),
    ("deepfill-make-masks", ["{ws}/masks_new", "--count", "0"], "count must be >= 1, got 0"),
]  # fmt: skip


@pytest.mark.parametrize(("command", "args", "expected"), PROCESS_CASES, ids=[_id(c) for c in PROCESS_CASES])
def test_bad_input_to_a_console_script_ends_in_one_line(ws, tmp_path, command, args, expected) -> None:
    args = [a.format(ws=ws) for a in args]
    if command == TRAIN:
        args = [*TRAIN_FAST, *args]
    if command in (INPAINT, EVAL, TRAIN, EXPORT):
        args = [*args, f"hydra.run.dir={tmp_path}/run"]
    result = run_cli(command, *args, cwd=tmp_path)
    _assert_one_line_error(result, command, expected.format(ws=ws))


def test_a_bad_image_in_a_folder_is_skipped_and_reported_after_the_others(ws, tmp_path) -> None:
    photos = tmp_path / "photos"
    shutil.copytree(ws / "imgs", photos)
    shutil.copy(ws / "trunc" / "b.png", photos / "c.png")
    masks = tmp_path / "masks"
    masks.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(ws / "mask.png", masks / f"{name}.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.png").write_bytes(b"written by an earlier run")
    result = run_cli(
        INPAINT,
        f"weights={ws}/w.pt",
        f"input={photos}",
        f"mask_path={masks}",
        f"output={out}",
        f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
    )
    _assert_one_line_error(
        result, INPAINT, f"skipped 1 of 3 image(s) that could not be inpainted: {photos}/c.png"
    )
    assert f"{INPAINT}: warning: skipped {photos}/c.png" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "earlier.png"]
    for name in ("a.png", "b.png"):  # complete PNGs of the right size
        with Image.open(out / name) as image:
            assert image.size == (80, 64)
            image.load()
    assert (out / "earlier.png").read_bytes() == b"written by an earlier run"


def test_single_output_file_is_written_where_asked(ws, tmp_path) -> None:
    result = run_cli(
        INPAINT,
        f"weights={ws}/w.pt",
        f"input={ws}/imgs/a.png",
        f"mask_path={ws}/mask.png",
        f"output={tmp_path}/filled.png",
        f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "filled.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["filled.png", "run"]


def test_convert_failure_keeps_an_existing_output_and_leaves_no_temporary(ws, tmp_path) -> None:
    out = tmp_path / "v1.pt"
    out.write_bytes(b"an earlier conversion")
    result = run_cli("deepfill-convert", str(ws / "garbage.npz"), str(out), cwd=tmp_path)
    _assert_one_line_error(result, "deepfill-convert", "garbage.npz: not a readable .npz")
    assert out.read_bytes() == b"an earlier conversion"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1.pt"]


def test_weights_of_another_width_load_with_their_own_width(ws, tmp_path) -> None:
    # A converted .pt of a cnum-8 model: its width is read off the file, not assumed.
    result = call_cli(
        EVAL,
        f"weights={ws}/w.pt",
        "data=folder",
        f"data.val.root={ws}/imgs",
        "lpips=false",
        f"output={tmp_path}/eval",
        f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "eval" / "metrics.csv").is_file()


# ----------------------------------------------------------------- the pieces behind the commands


def test_one_mask_convention_in_every_command(tmp_path) -> None:
    """The same file means the same hole to inpaint, eval's masks_dir and training's FolderMasks:
    value >= 128 is hole, also after JPEG compression and anti-aliasing."""
    from deepfill.data.masks import HOLE_THRESHOLD, FolderMasks, mask_for_image, read_mask
    from deepfill.evaluation.evaluate import _file_mask

    values = np.zeros((64, 80), np.uint8)
    values[16:48, 20:60] = 255
    values[16:48, 19] = HOLE_THRESHOLD - 1  # an anti-aliased edge: known
    values[16:48, 60] = HOLE_THRESHOLD  # the other edge: hole
    Image.fromarray(values).save(tmp_path / "m.png")
    Image.fromarray(values).save(tmp_path / "m.jpg", quality=75)
    expected = values >= HOLE_THRESHOLD
    (tmp_path / "folder").mkdir()
    Image.fromarray(values).save(tmp_path / "folder" / "m.png")
    training = FolderMasks(tmp_path / "folder", flip=False, rotate=False)(64, 80, np.random.default_rng(0))
    dummy = tmp_path / "image.png"
    Image.fromarray(np.zeros((64, 80, 3), np.uint8)).save(dummy)
    for hole in (
        read_mask(tmp_path / "m.png"),
        mask_for_image(tmp_path / "m.png", dummy, (64, 80)) > 0,
        _file_mask(tmp_path / "m.png", 64, 80) > 0,
        training[0].numpy() > 0,
    ):
        assert np.array_equal(hole, expected)
    # JPEG rings around the edges, yet the hole is the same away from them.
    jpeg = read_mask(tmp_path / "m.jpg")
    assert np.mean(jpeg == expected) > 0.99


def test_painted_layer_marks_holes_with_its_paint_and_grey_masks_warn(tmp_path) -> None:
    from deepfill.data.masks import read_mask

    layer = np.zeros((32, 32, 4), np.uint8)
    layer[8:16, 8:16] = (255, 0, 0, 255)  # red paint on a transparent layer
    layer[20:24, 20:24, 3] = 100  # faint paint (alpha < 128): not a hole
    Image.fromarray(layer).save(tmp_path / "layer.png")
    hole = read_mask(tmp_path / "layer.png")
    assert hole.sum() == 64 and hole[8:16, 8:16].all()
    Image.fromarray(np.full((32, 32), 100, np.uint8)).save(tmp_path / "grey.png")
    with pytest.warns(UserWarning, match=r"grey\.png is not binary: 100% of its pixels are grey"):
        assert not read_mask(tmp_path / "grey.png").any()
    soft = np.zeros((32, 32), np.uint8)
    soft[8:24, 8:24] = 255
    soft[8:24, 7] = 128  # a one-pixel anti-aliased edge is no reason to warn
    Image.fromarray(soft).save(tmp_path / "soft.png")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_mask(tmp_path / "soft.png")


def test_atomic_path_leaves_the_old_file_and_no_temporary_on_failure(tmp_path) -> None:
    from deepfill.utils.files import atomic_path

    target = tmp_path / "table.csv"
    target.write_text("old")

    def write_half_then_fail() -> None:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_half_then_fail()
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


@pytest.mark.parametrize("step", ["open", "close", "replace"])
def test_atomic_path_leaves_no_temporary_when_ctrl_c_lands_inside_it(tmp_path, monkeypatch, step) -> None:
    # Ctrl-C arrives between bytecodes, so also right after the temporary is created (before
    # the caller's write starts) or right after the rename: neither may leave a temporary.
    import os

    from deepfill.utils import files

    target = tmp_path / "out.png"
    target.write_text("old")
    real, real_close = getattr(os, step), os.close

    def then_interrupt(*args, **kwargs):
        result = real(*args, **kwargs)
        if step == "open":
            real_close(result)  # the process would end; the test must not leak the descriptor
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, step, then_interrupt)
    with pytest.raises(KeyboardInterrupt), files.atomic_path(target) as tmp:
        tmp.write_text("new")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    assert target.read_text() == ("new" if step == "replace" else "old")


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(capsys) -> None:
    from deepfill.utils.errors import UserError, is_user_error, report_errors

    def fails(error):
        raise error

    with pytest.raises(SystemExit) as info:
        report_errors("deepfill-x", fails, UserError("data.root: no such folder: /x\nmore detail"))
    assert info.value.code == 2
    assert capsys.readouterr().err == "deepfill-x: error: data.root: no such folder: /x\n"
    with pytest.raises(SystemExit) as info:
        report_errors("deepfill-x", fails, KeyboardInterrupt())
    assert info.value.code == 130
    assert capsys.readouterr().err == "deepfill-x: interrupted\n"
    # Our own bugs are not the user's: they propagate with their traceback.
    for bug in (KeyError("generator"), IndexError("list index out of range"), TypeError("bad operand")):
        assert not is_user_error(bug)
        with pytest.raises(type(bug)):
            report_errors("deepfill-x", fails, bug)


def test_a_checkpoint_of_another_width_names_what_differs(tmp_path) -> None:
    from deepfill.utils.checkpoints import check_state_dict, describe_differences
    from deepfill.utils.errors import UserError

    small, large = InpaintGenerator(cnum=8), InpaintGenerator(cnum=16)
    with pytest.raises(UserError) as info:
        check_state_dict(large, small.state_dict(), "weights", "w.pt", hint="trained with cnum 8")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("weights: w.pt does not fit this model:")
    assert "coarse.conv1.weight: (8, 5, 5, 5) in the file, (16, 5, 5, 5) here" in message
    assert message.endswith("trained with cnum 8")
    assert describe_differences(small.config, large.config) == "cnum: 8 in the file, 16 here"


def test_an_output_folder_that_cannot_be_written_is_found_up_front(tmp_path) -> None:
    from deepfill.utils.errors import UserError
    from deepfill.utils.files import writable_dir, writable_file

    # /proc refuses new folders even to root, as a read-only or foreign folder would.
    with pytest.raises(UserError, match=r"^output: cannot write into /proc/deepfill-out \("):
        writable_dir("/proc/deepfill-out", "output")
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match=r"^out: .*/f/sub lies under the file .*/f; expected a folder$"):
        writable_dir(tmp_path / "f" / "sub", "out")
    with pytest.raises(UserError, match="is a folder; expected a file name"):
        writable_file(tmp_path, "output")
    assert writable_dir(tmp_path / "new" / "deep", "output").is_dir()


def test_ctrl_c_ends_in_one_line_and_leaves_only_complete_images(ws, tmp_path) -> None:
    import signal
    import subprocess
    import sys
    import time

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    # Enough images that the run is still going when the signal comes, also on a loaded machine.
    count = 200
    for i in range(count):
        rgba = rng.integers(0, 255, (128, 128, 4), dtype=np.uint8)
        rgba[..., 3] = 255
        rgba[40:80, 40:80, 3] = 0  # the hole: transparent pixels
        Image.fromarray(rgba).save(photos / f"{i:03d}.png")
    out = tmp_path / "out"
    script = Path(sys.executable).parent / INPAINT
    args = [f"weights={ws}/w.pt", f"input={photos}", f"output={out}", f"hydra.run.dir={tmp_path}/run"]
    # A test run started in the background of a shell ignores SIGINT, and a child would
    # inherit that: give it the default disposition, as a terminal would.
    process = subprocess.Popen(
        [str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not (out.is_dir() and any(out.glob("*.png"))) and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"{INPAINT}: interrupted"
    written = sorted(out.iterdir())
    assert 0 < len(written) < count
    for path in written:  # only complete PNGs, no temporaries
        assert path.suffix == ".png" and not path.name.startswith(".")
        with Image.open(path) as image:
            image.load()
            assert image.size == (128, 128)


# Characters of real file names that Hydra's override grammar refuses unquoted (or splits on).
_NAME_CHARS = list("abcXYZ019 ()[]{}=,#'\"\\:;!@%^&*~`+-_.éüßñ日本語") + ["/"] * 4


def _random_name(rng: np.random.Generator) -> str:
    name = "".join(rng.choice(_NAME_CHARS, size=int(rng.integers(1, 24))))
    return "/" + name.replace("${", "$ {")  # an interpolation is Hydra's, not a path


@pytest.mark.parametrize(
    "draws", [pytest.param(300, id="seeded"), pytest.param(5000, marks=pytest.mark.slow)]
)
def test_any_path_value_reaches_the_config_as_typed(draws) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from deepfill.cli.launch import _quote_values

    rng = np.random.default_rng(0)
    parser = OverridesParser.create()
    for _ in range(draws):
        value = _random_name(rng)
        for multirun in (False, True):
            (override,) = _quote_values([f"input={value}"], multirun)
            (parsed,) = parser.parse_overrides([override])
            if multirun and "," in value and override == f"input={value}":
                continue  # a sweep under -m, as Hydra reads it
            assert parsed.value() == value, (value, override)
    # Values Hydra reads as typed are left as they are.
    assert _quote_values(["data.batch_size=4", "a=1,2", "input='x y'", "+k=v"], True) == [
        "data.batch_size=4",
        "a=1,2",
        "input='x y'",
        "+k=v",
    ]


def test_odd_paths_work_as_typed_for_every_path_key(ws, tmp_path) -> None:
    """Spaces, non-ASCII letters and the grammar's own characters in every path key of the
    commands, typed as they are (no quoting by the user)."""
    odd = tmp_path / "été 2024 (copie) [x]" / "a=b, #1"
    (odd / "photos" / "train").mkdir(parents=True)
    (odd / "photos" / "val").mkdir(parents=True)
    for i in range(2):
        shutil.copy(ws / "imgs" / "a.png", odd / "photos" / "train" / f"é {i}.png")
        shutil.copy(ws / "imgs" / "a.png", odd / "photos" / "val" / f"é {i}.png")
    shutil.copy(ws / "w.pt", odd / "w (1).pt")
    shutil.copy(ws / "mask.png", odd / "masque n°1.png")
    shutil.copy(ws / "imgs" / "a.png", odd / "photo d'été.png")
    result = call_cli(
        INPAINT,
        f"weights={odd}/w (1).pt",
        f"input={odd}/photo d'été.png",
        f"mask_path={odd}/masque n°1.png",
        f"output={odd}/résultats",
        f"hydra.run.dir={odd}/run inpaint",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (odd / "résultats" / "photo d'été.png").is_file()
    result = call_cli(
        EVAL,
        f"weights={odd}/w (1).pt",
        "data=folder",
        f"data.val.root={odd}/photos/val",
        "lpips=false",
        "data.image_size=64",
        f"output={odd}/éval",
        f"hydra.run.dir={odd}/run eval",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "deepfill" in (odd / "éval" / "metrics.csv").read_text()
    data = [
        "data=folder",
        "data.image_size=64",
        f"data.train.root={odd}/photos/train",
        f"data.val.root={odd}/photos/val",
    ]
    result = call_cli(TRAIN, *TRAIN_FAST, *data, f"hydra.run.dir={odd}/run train", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    last = odd / "run train" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    result = call_cli(
        TRAIN, *TRAIN_FAST, *data, f"ckpt_path={last}", f"hydra.run.dir={odd}/run resumed", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
