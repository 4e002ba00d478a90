"""ONNX export: the export forms of the layers, onnxruntime parity at several sizes (a narrow
model; the official weights against the official graph), the .onnx file in the commands and the
demo, the deployment page's torch-free snippet, half precision and bad input."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from deepfill.deploy import ONNX_FORMAT, OnnxGenerator, _threshold_translation, export_onnx
from deepfill.inference import inpaint_array, load_generator
from deepfill.models import ContextualAttention, InpaintGenerator, inpaint_padded
from deepfill.models.attention_export import attend_export
from deepfill.models.layers import (
    _Interleave,
    _interleave,
    _traced_align_corners_index,
    align_corners_index,
    resize_is_repeat,
)
from deepfill.official.goldens import generator_case
from deepfill.utils.errors import UserError
from helpers import onnx_graph
from helpers.commands import run_cli
from helpers.paths import REPO

pytest.importorskip("onnxruntime", reason="the onnx extra is installed by `make install`")


def _batch(n: int, height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n images with n different holes (a box each, at a different place)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(n, 3, height, width, generator=g) * 2 - 1
    mask = torch.zeros(n, 1, height, width)
    for i in range(n):
        top = (i * height // 5) % (height // 2)
        left = (i * width // 3) % (width // 2)
        mask[i, :, top : top + height // 3 + 1, left : left + width // 3 + 3] = 1
    return image, mask


# A block budget far below one grid row at the sizes tested: the narrow export's attention then
# works through one foreground row per block (the loop at its longest; the default budget, one
# block at these sizes, is what the official weights' export below runs).
SMALL_BLOCKS_MB = 0.01


@pytest.fixture(scope="module")
def narrow(tmp_path_factory) -> tuple[InpaintGenerator, Path]:
    """A cnum-8 generator and its fp32 export (attention in blocks of one row)."""
    torch.manual_seed(0)
    generator = InpaintGenerator(cnum=8).eval()
    path = tmp_path_factory.mktemp("onnx") / "narrow.onnx"
    report = export_onnx(generator, path, check_size=(64, 96), attention_block_mb=SMALL_BLOCKS_MB)
    assert report.path == path and path.is_file() and report.max_abs_diff < 1e-4
    return generator, path


# ---------------------------------------------------------------- export forms of the layers


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize(("ksize", "rate", "fuse_k"), [(3, 2, 3), (3, 1, 3), (5, 2, 5), (4, 3, 4), (1, 2, 1)])
@pytest.mark.parametrize("size", [(24, 24), (24, 36), (12, 48), (6, 6), (2, 12)])
def test_the_exported_attention_equals_the_chunked_one(fuse, ksize, rate, fuse_k, size) -> None:
    # Blocks of 1 and 5 grid rows (the last one short), and the whole grid; grids of one and
    # three rows, where the column-major fuse wraps through several columns.
    height, width = size
    if height % rate or width % rate:
        pytest.skip("size not divisible by the rate")
    layer = ContextualAttention(ksize=ksize, rate=rate, fuse_k=fuse_k, fuse=fuse, chunk_size=7)
    f = torch.randn(2, 8, height, width)
    mask = torch.zeros(2, 1, height, width)
    mask[0, :, 3:15, 5:17] = 1
    mask[1, :, 8:20, 2:10] = 1
    for m in (mask, None):
        y, offsets = layer._attend(f, f, m)
        # Whole rows; strips of one, two and five columns (the last strip overlapping the one
        # before where five does not divide the width).
        for rows, columns in [(1, None), (5, None), (None, None), (2, 1), (None, 2), (3, 5)]:
            y_export, offsets_export = attend_export(
                f,
                f,
                m,
                rate=rate,
                ksize=ksize,
                fuse_k=fuse_k,
                softmax_scale=layer.softmax_scale,
                fuse=fuse,
                rows=rows,
                columns=columns,
            )
            torch.testing.assert_close(y_export, y, atol=1e-4, rtol=1e-4)
            assert torch.equal(offsets_export, offsets)


def test_blocks_under_a_row_of_scores_hold_no_row_in_the_loop(monkeypatch) -> None:
    # Above some size one grid row of scores outgrows any budget (512 MiB at 4096²): the loop's
    # blocks are then strips narrower than the grid, and nothing the loop body makes holds a
    # whole row, however small the budget.
    from torch.utils._python_dispatch import TorchDispatchMode

    from deepfill.models import attention_export

    largest = [0]

    class Sizes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (list, tuple)) else [out]:
                if isinstance(t, torch.Tensor):
                    largest[0] = max(largest[0], t.numel() * t.element_size())
            return out

    run_loop = attention_export._run_loop

    def watched_loop(body, carry, xs, constants):
        def watched(*args):
            with Sizes():
                return body(*args)

        return run_loop(watched, carry, xs, constants)

    monkeypatch.setattr(attention_export, "_run_loop", watched_loop)
    layer = ContextualAttention(ksize=3, rate=1, fuse_k=3, chunk_size=7)
    f = torch.randn(1, 8, 40, 48)
    mask = torch.zeros(1, 1, 40, 48)
    mask[..., 10:30, 12:30] = 1
    row = 48 * 40 * 48 * 4  # one grid row of scores, in bytes
    y, offsets = layer._attend(f, f, mask)
    for chunk in (row // 16, row // 4):
        largest[0] = 0
        y_export, offsets_export = attend_export(
            f, f, mask, rate=1, ksize=3, fuse_k=3, softmax_scale=10.0, fuse=True, chunk_bytes=chunk
        )
        assert 0 < largest[0] < row / 2
        torch.testing.assert_close(y_export, y, atol=1e-4, rtol=1e-4)
        assert torch.equal(offsets_export, offsets)


def test_the_threshold_translation_keeps_what_torch_keeps(tmp_path) -> None:
    import onnxruntime

    class Thresholds(torch.nn.Module):
        def forward(self, x):
            return F.threshold(x, 0.25, 0.0), F.threshold(x, 0.25, -3.0)

    x = torch.tensor([[-1.0, 0.0, 0.25, 0.2500001, 0.5, 2.0**-70]])
    program = torch.onnx.export(
        Thresholds().eval(),
        (x,),
        dynamo=True,
        verbose=False,
        custom_translation_table={torch.ops.aten.threshold.default: _threshold_translation()},
    )
    program.save(str(tmp_path / "t.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "t.onnx"), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    for got, expected in zip(outputs, Thresholds()(x), strict=True):
        assert np.array_equal(got, expected.numpy())
    assert [node.op_type for node in program.model_proto.graph.node].count("ThresholdedRelu") == 1


def test_the_in_graph_resize_indices_equal_the_official_ones() -> None:
    for in_size, out_size in [(64, 32), (63, 17), (256, 64), (8, 1), (5, 5), (31, 62), (1000, 250)]:
        assert torch.equal(
            _traced_align_corners_index(in_size, out_size, torch.device("cpu")),
            align_corners_index(in_size, out_size),
        )


def test_the_x2_upsampling_is_a_pixel_repeat_at_every_exported_size() -> None:
    # The exported graph upsamples by repeating pixels at any size (it cannot check per size).
    assert all(resize_is_repeat((side, side + 8), (2 * side, 2 * side + 16)) for side in range(1, 1025))


def test_the_exported_interleave_equals_the_autograd_one() -> None:
    y = torch.randn(2, 4 * 3, 6, 9)
    assert torch.equal(_interleave(y, 3), _Interleave.apply(y, 3))


# ---------------------------------------------------------------- parity


@pytest.mark.parametrize(("n", "height", "width"), [(2, 256, 256), (2, 512, 512), (2, 200, 328), (1, 8, 8)])
def test_onnxruntime_matches_pytorch_at_any_size_and_batch(narrow, n, height, width) -> None:
    generator, path = narrow
    image, mask = _batch(n, height, width)
    with torch.no_grad():
        expected = generator(image, mask)
    got = OnnxGenerator(path)(image, mask)
    assert [tuple(t.shape) for t in got] == [tuple(t.shape) for t in expected]
    assert (got[1] - expected[1]).abs().max().item() < 1e-4  # x_stage2
    assert (got[0] - expected[0]).abs().max().item() < 1e-4
    assert got[2].dtype == torch.int64
    assert (got[2] == expected[2]).float().mean().item() > 0.99  # argmax ties may flip


def test_one_mask_for_the_batch_is_broadcast(narrow) -> None:
    generator, path = narrow
    image, mask = _batch(3, 64, 80)
    with torch.no_grad():
        expected = generator(image, mask[:1])
    got = OnnxGenerator(path)(image, mask[:1])
    assert (got[1] - expected[1]).abs().max().item() < 1e-4


def test_official_weights_reproduce_the_official_graph(goldens, tmp_path) -> None:
    case = generator_case(goldens)
    path = export_onnx(case["generator"], tmp_path / "official.onnx").path
    x_stage1, x_stage2, _ = OnnxGenerator(path)(case["image"], case["mask"])
    # The tolerance of the PyTorch generator's parity test.
    assert (x_stage1 - case["x_stage1"]).abs().max().item() < 1e-3
    assert (x_stage2 - case["x_stage2"]).abs().max().item() < 1e-3
    with torch.no_grad():
        _, expected, _ = case["generator"](case["image"], case["mask"])
    assert (x_stage2 - expected).abs().max().item() < 1e-4


def test_the_file_says_what_it_is(narrow) -> None:
    import onnx

    _, path = narrow
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["deepfill.format"] == ONNX_FORMAT and meta["deepfill.multiple"] == "8"
    assert meta["deepfill.precision"] == "fp32" and '"cnum": 8' in meta["deepfill.generator"]
    assert meta["deepfill.attention_block_mb"] == f"{SMALL_BLOCKS_MB:g}"
    # The attention's blocks are one loop (ONNX Scan) over symbolic sizes, not unrolled, and
    # what they read beyond their strips is computed by one more loop before it; the
    # weights' threshold in the blocks' loop is one ThresholdedRelu, not a Where over the scores.
    ops = [node.op_type for _, node in onnx_graph.nodes(model.graph)]
    assert ops.count("Scan") == 2 and ops.count("ThresholdedRelu") == 1
    dims = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.input, *model.graph.output]
    }
    assert dims["image"] == ["batch", 3, "height", "width"]
    assert dims["mask"] == ["batch", 1, "height", "width"]
    assert dims["x_stage2"] == ["batch", 3, "height", "width"]


# ---------------------------------------------------------------- using the file


def test_inpaint_array_and_padding_take_the_onnx_model(narrow) -> None:
    generator, path = narrow
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 255, (61, 83, 3), dtype=np.uint8)  # not multiples of 8
    hole = np.zeros((61, 83), bool)
    hole[15:40, 20:60] = True
    onnx_generator = load_generator(path)
    assert isinstance(onnx_generator, OnnxGenerator)
    got = inpaint_array(onnx_generator, photo, hole)
    expected = inpaint_array(generator, photo, hole)
    assert np.array_equal(got.completed[~hole], photo[~hole])
    assert np.abs(got.completed.astype(int) - expected.completed.astype(int)).max() <= 1
    image, mask = _batch(1, 61, 83)
    _, x2, _, _ = inpaint_padded(onnx_generator, image, mask)
    assert tuple(x2.shape) == (1, 3, 61, 83)
    with pytest.raises(ValueError, match="precision: an ONNX model runs in the precision it was exported in"):
        inpaint_array(onnx_generator, photo, hole, "bf16")


def test_deepfill_inpaint_and_the_demo_run_the_onnx_file(narrow, tmp_path) -> None:
    from deepfill.demo import Demo, find_weights

    generator, path = narrow
    rng = np.random.default_rng(2)
    photo = rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)
    hole = np.zeros((70, 90), np.uint8)
    hole[20:50, 30:70] = 255
    Image.fromarray(photo).save(tmp_path / "photo.png")
    Image.fromarray(hole).save(tmp_path / "mask.png")
    torch.save({"state_dict": generator.state_dict()}, tmp_path / "narrow.pt")
    outputs = {}
    for weights in (path, tmp_path / "narrow.pt"):
        out = tmp_path / f"filled_{weights.suffix[1:]}.png"
        args = [f"weights={weights}", f"input={tmp_path}/photo.png", f"mask_path={tmp_path}/mask.png"]
        result = run_cli(
            "deepfill-inpaint", *args, f"output={out}", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr[-2000:]
        outputs[weights.suffix] = np.asarray(Image.open(out)).astype(int)
    assert np.abs(outputs[".onnx"] - outputs[".pt"]).max() <= 1
    shutil.copy(path, tmp_path / "exported.onnx")
    labels = [option.label for option in find_weights([tmp_path])]
    assert any(label.startswith("ONNX export exported.onnx") for label in labels)
    demo = Demo([tmp_path], tmp_path / "exported.onnx", "cpu")
    result, _, painted = demo.inpaint({"background": photo, "layers": []}, None, "preset", "box", 0)
    assert np.array_equal(result.completed[~painted], photo[~painted])


def _deployment_onnxruntime_snippet() -> str:
    page = REPO / "docs" / "deployment.md"
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)
    snippets = [b for b in blocks if "import onnxruntime" in b]
    assert len(snippets) == 1, "docs/deployment.md has one onnxruntime snippet"
    return snippets[0]


def test_the_deployment_snippet_inpaints_with_numpy_pillow_and_onnxruntime_only(narrow, tmp_path) -> None:
    generator, path = narrow
    code = _deployment_onnxruntime_snippet()
    names = re.findall(r"[\w./-]+\.(?:onnx|jpg|png)", code)
    model = next(n for n in names if n.endswith(".onnx"))
    shutil.copy(path, tmp_path / model)
    rng = np.random.default_rng(3)
    photo = rng.integers(0, 255, (75, 101, 3), dtype=np.uint8)
    hole = np.zeros((75, 101), np.uint8)
    hole[20:55, 30:80] = 255
    image_name, mask_name, result_name = (n for n in names if not n.endswith(".onnx"))
    Image.fromarray(photo).save(tmp_path / image_name)
    Image.fromarray(hole).save(tmp_path / mask_name)
    photo = np.asarray(Image.open(tmp_path / image_name).convert("RGB"))  # as decoded (JPEG)
    # torch (and deepfill, which needs it) cannot be imported in the snippet's process.
    guard = "import sys; sys.modules['torch'] = None; sys.modules['deepfill'] = None\n"
    run = subprocess.run(
        [sys.executable, "-c", guard + code], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    got = np.asarray(Image.open(tmp_path / result_name)).astype(int)
    expected = inpaint_array(generator, photo, hole > 127).completed.astype(int)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1


# ---------------------------------------------------------------- half precision, bad input


# What onnxruntime's CUDA execution provider has kernels for, at the export's opset (18), for
# the operators of the fp16 export: the element types of each operator's first input, from
# onnxruntime's docs/OperatorKernels.md (section CUDAExecutionProvider). An operator or type
# outside it would run on the CPU provider in a GPU session, with copies to and from the GPU.
_FLOATS = {"FLOAT", "FLOAT16", "DOUBLE"}
_INTS = {"INT32", "INT64"}
CUDA_KERNEL_TYPES = {
    **{op: _FLOATS | _INTS for op in ("Add", "Sub", "Mul", "Div", "Min", "Mod", "Greater", "Less")},
    **{op: _FLOATS | _INTS for op in ("GreaterOrEqual", "ReduceMax", "ReduceSum", "Pow")},
    **{op: _FLOATS for op in ("ArgMax", "Conv", "DepthToSpace", "Elu", "Floor", "MatMul", "Pad")},
    **{op: _FLOATS for op in ("Reciprocal", "Relu", "Softmax", "Sqrt", "ThresholdedRelu")},
    **{op: {"BOOL"} for op in ("And", "Where")},
    **{op: _FLOATS | _INTS | {"BOOL"} for op in ("Cast", "Concat", "Equal", "Expand", "Gather", "Reshape")},
    **{op: _FLOATS | _INTS | {"BOOL"} for op in ("Scan", "Shape", "Slice", "Squeeze", "Transpose")},
    "Unsqueeze": _FLOATS | _INTS | {"BOOL"},
    "Clip": _FLOATS | {"INT64"},
    "ConstantOfShape": {"INT64"},
    "Range": _INTS,
}


# Slow (a whole fp16 export): the fast suite exports fp16 through the README's `make export ...
# precision=fp16` (tests/test_docs.py), whose own check compares it with PyTorch.
@pytest.mark.slow
def test_fp16_export_keeps_attention_in_float32_and_stays_close(tmp_path) -> None:
    import onnx

    torch.manual_seed(0)
    generator = InpaintGenerator(cnum=8).eval()
    torch.save({"state_dict": generator.state_dict()}, tmp_path / "narrow.pt")
    result = run_cli(
        "deepfill-export",
        f"weights={tmp_path}/narrow.pt",
        f"output={tmp_path}/half.onnx",
        "precision=fp16",
        "check_size=[64,64]",
        f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"wrote \S+half\.onnx .*fp16.*onnxruntime matches PyTorch at 64x64", result.stdout)
    model = onnx.load(str(tmp_path / "half.onnx"))
    graph, softmax = next((g, node) for g, node in onnx_graph.nodes(model.graph) if node.op_type == "Softmax")
    assert onnx_graph.elem_type(graph, softmax.input[0]) == onnx.TensorProto.FLOAT
    convs = [i for i in model.graph.initializer if i.dims and len(i.dims) == 4]
    assert convs and all(i.data_type == onnx.TensorProto.FLOAT16 for i in convs)
    # Every operator of the file, at the types it is used with, has a CUDA kernel.
    used = onnx_graph.first_input_types(model)
    assert "FLOAT16" in used["Conv"] and "FLOAT" in used["Softmax"]
    lacking = {op: types - CUDA_KERNEL_TYPES.get(op, set()) for op, types in used.items()}
    assert not {op: types for op, types in lacking.items() if types or op not in CUDA_KERNEL_TYPES}
    image, mask = _batch(2, 128, 128)
    with torch.no_grad():
        expected = generator(image, mask)[1]
    got = OnnxGenerator(tmp_path / "half.onnx")(image, mask)[1]
    assert got.dtype == torch.float32
    hole = mask.expand_as(got) > 0
    assert 0 < (got - expected)[hole].abs().mean().item() < 0.01


# The run's own peak: the process's peak RSS is reset to its current RSS just before the run
# (Linux clear_refs), so that what importing and loading held for a moment does not hide it.
_PEAK_MEASURE = """
def _status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))
def peak_growth(run):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status("VmRSS")
    run()
    print(_status("VmHWM") - before)  # bytes
"""

_PEAK_CHILD = (
    _PEAK_MEASURE
    + """
import sys, torch
from deepfill.deploy import OnnxGenerator
generator = OnnxGenerator(sys.argv[1], threads=2)
generator(torch.zeros(1, 3, 16, 16), torch.zeros(1, 1, 16, 16))  # libraries and session loaded
size = int(sys.argv[2])
mask = torch.zeros(1, 1, size, size)
mask[..., size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
image = torch.rand(1, 3, size, size) * 2 - 1
peak_growth(lambda: generator(image, mask))
"""
)

_PEAK_CHILD_PYTORCH = (
    _PEAK_MEASURE
    + """
import sys, torch
from deepfill.models import InpaintGenerator
torch.set_num_threads(2)
generator = InpaintGenerator(cnum=8).eval()
generator.load_state_dict(torch.load(sys.argv[1]))
size = int(sys.argv[2])
mask = torch.zeros(1, 1, size, size)
mask[..., size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
image = torch.rand(1, 3, size, size) * 2 - 1
with torch.inference_mode():
    generator(torch.zeros(1, 3, 16, 16), torch.zeros(1, 1, 16, 16))
    peak_growth(lambda: generator(image, mask))
"""
)


def _peak_growth(child: str, path: Path, size: int) -> int:
    """Bytes the peak resident memory of a fresh process grew by in one run at size x size."""
    result = subprocess.run(
        [sys.executable, "-c", child, str(path), str(size)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.strip().splitlines()[-1])


def test_the_exported_model_needs_about_the_memory_of_the_pytorch_path(narrow, tmp_path) -> None:
    # The target (within 2x the PyTorch path's peak) at a size the suite can afford. With
    # onnxruntime's buffer reuse the stage-1 decoder's buffers stayed allocated through the
    # attention loop, waiting for the stage-2 decoder's outputs of the same shapes: at 1024x1024
    # the run's peak grew by 970 MiB against the PyTorch path's 437-486 MiB (2.0-2.2x); without
    # the reuse by 745 MiB (1.5-1.7x; 2-core Xeon).
    generator, path = narrow
    torch.save(generator.state_dict(), tmp_path / "narrow.pt")
    pytorch = _peak_growth(_PEAK_CHILD_PYTORCH, tmp_path / "narrow.pt", 1024)
    exported = _peak_growth(_PEAK_CHILD, path, 1024)
    assert exported < 1.9 * pytorch, (exported / 2**20, pytorch / 2**20)


def test_the_exported_attention_works_in_bounded_memory(narrow) -> None:
    # At 512x512 the attention's grid is 64x64: one full score matrix is 4096^2 floats (64 MiB).
    # The export without blocks held several at once (peak +653 MiB in this test); in blocks of
    # one row the whole run's peak, convolutions included, grew by 209 MiB, and by 109 MiB
    # without onnxruntime's buffer reuse (2-core Xeon).
    _, path = narrow
    score_matrix = (512 // 8) ** 4 * 4
    assert _peak_growth(_PEAK_CHILD, path, 512) < 5 * score_matrix


def test_without_the_shared_arena_the_session_still_runs(narrow, monkeypatch) -> None:
    """Where onnxruntime refuses the exact-size arena (another library registered a CPU
    allocator first), the session opens with the provider's own arena and gives the same result."""
    import onnxruntime

    import deepfill.deploy as deploy

    _, path = narrow
    image, mask = _batch(1, 64, 64)
    expected = OnnxGenerator(path)(image, mask)[1]

    def refuse(*args, **kwargs):
        raise RuntimeError("an allocator for this device is already registered")

    monkeypatch.setattr(deploy, "_SHARED_ARENA", [])
    monkeypatch.setattr(onnxruntime, "create_and_register_allocator", refuse)
    generator = OnnxGenerator(path)
    assert generator.session.get_session_options().enable_cpu_mem_arena
    assert deploy._SHARED_ARENA == []  # not registered: the session did not ask for it
    assert torch.equal(generator(image, mask)[1], expected)


def test_a_failed_check_writes_nothing(narrow, tmp_path, monkeypatch) -> None:
    import deepfill.deploy as deploy

    generator, _ = narrow
    target = tmp_path / "model.onnx"
    target.write_bytes(b"an earlier export")
    monkeypatch.setitem(deploy.TOLERANCE, "fp32", 0.0)
    monkeypatch.setattr(deploy, "_dynamic_shapes", lambda multiple: None)  # a faster, static export
    with pytest.raises(RuntimeError, match=r"export check failed: .* nothing was written"):
        export_onnx(generator, target, check_size=(64, 96))  # the static example size
    assert target.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_bad_files_and_sizes_give_one_clear_line(narrow, tmp_path) -> None:
    import onnx
    from onnx import TensorProto, helper

    _, path = narrow
    other = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "other",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
    )
    onnx.save(other, str(tmp_path / "other.onnx"))
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match=r"other\.onnx is an ONNX model but not a DeepFill generator export"):
        OnnxGenerator(tmp_path / "other.onnx")
    with pytest.raises(UserError, match=r"garbage\.onnx is not a readable ONNX model"):
        OnnxGenerator(tmp_path / "garbage.onnx")
    generator = OnnxGenerator(path)
    with pytest.raises(ValueError, match="image height and width must be divisible by 8, got 60x64"):
        generator(*_batch(1, 60, 64))
    image, mask = _batch(2, 64, 64)
    with pytest.raises(ValueError, match=r"mask must be \(1 or N,1,H,W\) with N=2"):
        generator(image, mask[:, :, :, :1].expand(2, 2, 64, 1))


# ---------------------------------------------------------------- int8


def test_calibration_batches_are_photos_with_zeroed_holes_from_a_folder_or_the_embedded_set(
    tmp_path,
) -> None:
    from deepfill.deploy import calibration_batches

    embedded = calibration_batches(None, (64, 96), count=5)
    assert len(embedded) == 5
    for batch in embedded:
        image, mask = batch["image"], batch["mask"]
        assert image.shape == (1, 3, 64, 96) and mask.shape == (1, 1, 64, 96)
        assert image.dtype == mask.dtype == np.float32
        assert set(np.unique(mask)) == {0.0, 1.0} and image.min() >= -1 and image.max() <= 1
        assert np.all(image[np.broadcast_to(mask > 0, image.shape)] == 0)  # the hole is zeroed
    assert not np.array_equal(embedded[0]["mask"], embedded[1]["mask"])  # strokes, then a box
    folder = tmp_path / "photos" / "nested"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 80, 3), dtype=np.uint8)).save(folder / "a.png")
    (folder / "notes.txt").write_text("not a photo")
    mine = calibration_batches(tmp_path / "photos", (64, 64), count=16)
    assert len(mine) == 3  # three crops of the one photo
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"^calibration: no images in .*empty"):
        calibration_batches(tmp_path / "empty")
    (folder / "b.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=r"^calibration: .*b\.jpg"):
        calibration_batches(tmp_path / "photos")


def test_int8_quantises_the_convolutions_keeps_the_attention_float_and_stays_close(narrow, tmp_path) -> None:
    """The int8 step on the narrow fp32 export (the full command is the slow test below)."""
    import onnx

    from deepfill.deploy import INT8_HOLE_TOLERANCE, _hole_difference, _quantize_int8, calibration_batches

    generator, path = narrow
    batches = calibration_batches(None, (64, 96), count=6)
    target = tmp_path / "int8.onnx"
    _quantize_int8(path, target, batches)
    model = onnx.load(str(target))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["deepfill.precision"] == "int8" and meta["deepfill.format"] == ONNX_FORMAT
    assert meta["deepfill.family"] == "v1"
    int8 = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    dequantized = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(dequantized.get(c.input[1]) in int8 for c in convs)  # int8 weights
    assert all(c.input[0] in dequantized for c in convs)  # quantised activations
    graph, softmax = next((g, n) for g, n in onnx_graph.nodes(model.graph) if n.op_type == "Softmax")
    assert onnx_graph.elem_type(graph, softmax.input[0]) == onnx.TensorProto.FLOAT
    loaded = OnnxGenerator(target)
    assert loaded.precision == "int8"
    ort = pytest.importorskip("onnxruntime")
    error = _hole_difference(ort, target, generator, batches[:2])
    assert 0 < error < INT8_HOLE_TOLERANCE
    assert _hole_difference(ort, path, generator, batches[:2]) < 1e-5  # the float32 file it came from


def test_calibration_belongs_to_int8_exports_and_a_bad_folder_fails_before_the_trace(
    narrow, tmp_path
) -> None:
    generator, _ = narrow
    with pytest.raises(UserError, match=r"^calibration: only an int8 export is calibrated, not fp32"):
        export_onnx(generator, tmp_path / "m.onnx", calibration=tmp_path)
    with pytest.raises(UserError, match=r"^calibration: .*missing is not a folder of photos"):
        export_onnx(generator, tmp_path / "m.onnx", "int8", calibration=tmp_path / "missing")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_the_export_command_writes_an_int8_model_that_inpaints(narrow, tmp_path) -> None:
    generator, _ = narrow
    weights = tmp_path / "narrow.pt"
    torch.save({"state_dict": generator.state_dict()}, weights)
    photos = tmp_path / "photos"
    photos.mkdir()
    from deepfill.data.datasets import _sample_photo

    Image.fromarray(_sample_photo("astronaut")).save(photos / "astronaut.png")
    result = run_cli(
        "deepfill-export",
        f"weights={weights}",
        f"output={tmp_path / 'int8.onnx'}",
        "precision=int8",
        f"calibration={photos}",
        "check_size=[64,96]",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "int8) in" in result.stdout and "mean abs in the holes of calibration photos" in result.stdout
    loaded = OnnxGenerator(tmp_path / "int8.onnx")
    photo = np.ascontiguousarray(_sample_photo("coffee")[:64, :96])
    hole = np.zeros((64, 96), bool)
    hole[16:40, 24:72] = True
    completed = inpaint_array(loaded, photo, hole).completed
    assert np.array_equal(completed[~hole], photo[~hole]) and not np.array_equal(completed, photo)


@pytest.mark.slow
def test_an_int8_model_that_fails_its_check_writes_nothing(narrow, tmp_path, monkeypatch) -> None:
    import deepfill.deploy as deploy

    generator, _ = narrow
    target = tmp_path / "model.onnx"
    target.write_bytes(b"an earlier export")
    monkeypatch.setattr(deploy, "INT8_HOLE_TOLERANCE", 0.0)
    with pytest.raises(RuntimeError, match=r"the int8 model's x_stage2 differs .* nothing was written"):
        export_onnx(generator, target, "int8", check_size=(64, 96))
    assert target.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
