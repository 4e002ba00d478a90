"""Deployment: the whole generator, contextual attention included, as one ONNX graph.

    report = export_onnx(load_generator("places2_v1.pt"), "places2_v1.onnx")
    generator = OnnxGenerator("places2_v1.onnx")          # onnxruntime, no PyTorch model
    x_stage1, x_stage2, offsets = generator(image, mask)   # as InpaintGenerator

The graph: inputs ``image`` (N,3,H,W) float32 RGB in [-1,1] and ``mask`` (N,1,H,W) float32,
1 = hole, one mask per sample; outputs ``x_stage1``, ``x_stage2`` (N,3,H,W) float32 in [-1,1] and
``offsets`` (N,2,H/(4*rate),W/(4*rate)) int64, as the PyTorch generator returns them. N, H and W
are dynamic: any H and W that are multiples of the model's ``multiple`` (stored in the model's
metadata, 8 for the paper's model); other sizes are padded outside the graph
(:func:`deepfill.models.inpaint_padded` works with :class:`OnnxGenerator` too).

Exporter: ``torch.onnx.export(dynamo=True)`` (``torch.export`` then onnxscript), opset 18. The
TorchScript exporter records the input sizes as constants wherever the model computes with
them (the 'SAME' paddings, the resize indices, the attention's patch grid), so its graph is right
at the traced size only; ``torch.export`` keeps them symbolic and checks every shape guard
against the declared dynamic dimensions. While exporting, the layers take their plain
formulations (``torch.compiler.is_exporting()``): ELU instead of the in-place CPU one, F.pad
instead of the write-once pad, the resize indices computed in the graph, and contextual
attention as a loop over blocks of foreground positions
(:mod:`deepfill.models.attention_export`, ONNX ``Scan``; the blocks' rows and the strips' width
follow from the input size and ``attention_block_mb``, so that the attention's memory is
bounded at any size): the official paste is a transposed convolution with kernels cut from the
input, which no exporter takes, and is a matrix product of the
attention weights with the background's phases here. Tests check each of those forms against
the PyTorch path.

``precision="fp16"``: the weights and activations in float16, inputs and outputs still float32;
contextual attention's scores, softmax and offsets stay float32 (a float16 softmax over
thousands of patches with scale 10 overflows).

``precision="int8"`` (CPU): the float32 export, checked, then statically quantised by
onnxruntime's tools: every convolution reads int8 weights (per output channel) and uint8
activations (QDQ format), with activation ranges calibrated on photos with holes
(:func:`calibration_batches`: the embedded training photos, or a folder of the user's);
contextual attention stays float32.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepfill.models import ContextualAttention
from deepfill.models.generator import InpaintGenerator, check_generator_inputs
from deepfill.utils.errors import UserError
from deepfill.utils.files import atomic_path, writable_file
from deepfill.utils.logs import quiet_loggers

__all__ = [
    "EXPORT_PRECISIONS",
    "ONNX_FORMAT",
    "ONNX_OPSET",
    "ExportReport",
    "OnnxGenerator",
    "calibration_batches",
    "export_onnx",
    "import_onnxruntime",
]

EXPORT_PRECISIONS = ("fp32", "fp16", "int8")
ONNX_OPSET = 18
# Metadata "deepfill.format" of every export: the inputs and outputs, the same for v1 and v2
# (their family: "deepfill.family").
ONNX_FORMAT = "deepfill-v1-generator"
INPUT_NAMES = ("image", "mask")
OUTPUT_NAMES = ("x_stage1", "x_stage2", "offsets")
# Largest exported side: the dynamic dimensions' bound, and the range over which the x2
# align-corners resize is known to be a plain repeat (tests/test_export.py checks it).
MAX_SIDE = 2048
# Export parity check (max abs difference of x_stage2 against PyTorch at the check size; an
# int8 export takes the fp32 check before it is quantised).
TOLERANCE = {"fp32": 1e-4, "fp16": 0.1}
# int8: the mean abs difference of x_stage2 in the holes of calibration photos against the
# PyTorch generator. A quickstart model's int8 export differed from its fp32 export by
# 0.012-0.015 on ten held-out photos; allowed: about 3x that.
INT8_HOLE_TOLERANCE = 0.05
# Photos with holes the int8 activation ranges are calibrated on.
CALIBRATION_COUNT = 16
_MISSING = (
    "the ONNX extra is not installed ({name} missing): pip install 'deepfill[onnx]' "
    "(onnx, onnxscript and onnxruntime)"
)


def import_onnxruntime():
    """``onnxruntime``, or one :class:`UserError` line saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError(_MISSING.format(name="onnxruntime")) from None
    return onnxruntime


_SHARED_ARENA = []  # onnxruntime, once its exact-size CPU arena is registered in this process


def _use_exact_size_arena(ort, options) -> None:
    """Give a session's CPU buffers a memory arena that grows by exactly what is asked.

    The arena keeps freed buffers for later nodes, so the attention loop's many block-sized
    buffers are not each page-faulted in anew: the paper's model ran 1.3x faster at 512² than
    without one (2-core Xeon). The CPU provider's own arena grows by powers of two, which held
    8.99 GiB at 2048² against 5.80 GiB for this one (same speed). onnxruntime sets an arena's
    growth only for an allocator registered with its environment, once per process and shared
    by the sessions that ask for it; the arena's memory goes back to the system at exit."""
    options.enable_cpu_mem_arena = True
    if not _SHARED_ARENA:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        try:
            ort.create_and_register_allocator(info, ort.OrtArenaCfg({"arena_extend_strategy": 1}))  # exact
        except Exception:  # e.g. another library registered one first
            return  # the provider's own arena: the same speed, more memory at large sizes
        _SHARED_ARENA.append(ort)
    options.add_session_config_entry("session.use_env_allocators", "1")


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and checked."""

    path: Path
    precision: str
    megabytes: float
    seconds: float
    check_size: tuple[int, int]
    max_abs_diff: float  # x_stage2, onnxruntime against the PyTorch float32 generator
    # int8: x_stage2's mean abs difference in the holes of two calibration photos (else None)
    int8_hole_diff: float | None = None


class _ExportForm(nn.Module):
    """The generator with float32 inputs and outputs whatever its own precision."""

    def __init__(self, generator: InpaintGenerator, dtype: torch.dtype) -> None:
        super().__init__()
        self.generator = generator
        self.dtype = dtype

    def forward(self, image: torch.Tensor, mask: torch.Tensor):
        x_stage1, x_stage2, offsets = self.generator(
            image.to(self.dtype), mask.to(self.dtype), check_mask=False
        )
        return x_stage1.float(), x_stage2.float(), offsets


def _check_inputs(generator: InpaintGenerator, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of two different images and masks of ``size`` (fixed seed)."""
    height, width = size
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, height, width, generator=g) * 2 - 1
    mask = torch.zeros(2, 1, height, width)
    mask[0, :, height // 4 : height // 2, width // 3 : 2 * width // 3] = 1
    mask[1, :, height // 2 : 7 * height // 8, width // 8 : width // 2] = 1
    return image, mask


def _threshold_translation():
    """onnxscript translation of ``aten.threshold`` (keep x where x > threshold, else value): one
    ThresholdedRelu for value 0 (the attention's weights below 2^-64), about 7x faster in
    onnxruntime than the exporter's default Where(Greater)."""
    from onnxscript import opset18 as op

    def threshold(self, threshold: float, value: float):
        if value == 0:
            return op.ThresholdedRelu(self, alpha=threshold)
        keep = op.Greater(self, op.CastLike(threshold, self))
        return op.Where(keep, self, op.CastLike(value, self))

    return threshold


def _dynamic_shapes(multiple: int) -> dict:
    blocks = MAX_SIDE // multiple
    # Dim minimum 2: torch.export treats sizes 0 and 1 as special; the graph still runs at one
    # block (checked by the tests), the bound only concerns tracing.
    height = multiple * torch.export.Dim("height_blocks", min=2, max=blocks)
    width = multiple * torch.export.Dim("width_blocks", min=2, max=blocks)
    batch = torch.export.Dim("batch", min=1, max=1024)
    return {"image": {0: batch, 2: height, 3: width}, "mask": {0: batch, 2: height, 3: width}}


def _write_model(
    program, path: Path, generator: InpaintGenerator, precision: str, attention_block_mb: float | None
) -> None:
    """Save ``program`` to ``path`` as one file with readable axis names and our metadata."""
    import onnx

    with atomic_path(path) as tmp:
        program.save(str(tmp), external_data=False)
        model = onnx.load(str(tmp))
        # The exporter names axes by their expressions ("8*height_blocks"): say what they are.
        image_dims = model.graph.input[0].type.tensor_type.shape.dim
        names = {
            image_dims[axis].dim_param: name for axis, name in ((0, "batch"), (2, "height"), (3, "width"))
        }
        for value in list(model.graph.input) + list(model.graph.output):
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param in names:
                    dim.dim_param = names[dim.dim_param]
        metadata = {
            "deepfill.format": ONNX_FORMAT,
            "deepfill.multiple": str(generator.multiple),
            "deepfill.family": generator.family,
            "deepfill.precision": precision,
            "deepfill.attention_block_mb": "default"
            if attention_block_mb is None
            else f"{attention_block_mb:g}",
            "deepfill.generator": json.dumps(generator.config, sort_keys=True),
            "deepfill.inputs": "image (N,3,H,W) float32 RGB in [-1,1]; mask (N,1,H,W) float32, 1 = hole",
        }
        _set_metadata(model, metadata)
        onnx.save(model, str(tmp))


def _set_metadata(model, metadata: dict[str, str]) -> None:
    """Replace the metadata of ``model`` (an ``onnx.ModelProto``) with ``metadata``."""
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "deepfill"


def calibration_batches(
    photos: str | Path | None = None, size: tuple[int, int] = (256, 256), count: int = CALIBRATION_COUNT
) -> list[dict[str, np.ndarray]]:
    """``count`` inputs for the int8 calibration: ``{"image": (1,3,H,W) float32 in [-1,1] with the
    hole zeroed, "mask": (1,1,H,W) float32, 1 = hole}`` of ``size`` (H, W).

    photos: a folder of images (searched recursively; any format ``deepfill-inpaint`` reads),
    or None for the embedded training photos (scikit-image's, no download). Each photo gives
    three crops along its longer side after its shorter side is resized to twice the crop's;
    holes alternate between a centred box and free-form strokes (fixed seeds). Use photos like
    those the model will fill: the activations' ranges are read off them."""
    from deepfill.data import masks
    from deepfill.data.image_files import IMAGE_EXTENSIONS, crops_along_longer_side, list_images, load_image
    from deepfill.utils.errors import UnreadableImageError

    height, width = size
    if photos is None:
        from deepfill.data.datasets import SAMPLE_SPLITS, _sample_photo

        arrays = (_sample_photo(name) for name in SAMPLE_SPLITS["train"])
    else:
        folder = Path(photos)
        if not folder.is_dir():
            raise UserError(f"calibration: {folder} is not a folder of photos")
        files = list_images(folder)
        if not files:
            raise UserError(f"calibration: no images in {folder} (expected {', '.join(IMAGE_EXTENSIONS)})")

        def read(path: Path) -> np.ndarray:
            try:
                return load_image(path)
            except UnreadableImageError as error:
                raise UserError(f"calibration: {error}") from None

        arrays = (read(p) for p in files)
    batches: list[dict[str, np.ndarray]] = []
    for array in arrays:
        for crop in crops_along_longer_side(array, height, width):
            make = masks.centered_rectangle if len(batches) % 2 else masks.medium
            hole = make(height, width, np.random.default_rng(len(batches)))[0].numpy() > 0.5
            hole = hole.astype(np.float32)
            pixels = (crop.astype(np.float32) / 127.5 - 1).transpose(2, 0, 1)[None] * (1 - hole)
            batches.append({"image": np.ascontiguousarray(pixels), "mask": hole[None, None]})
            if len(batches) == count:
                return batches
    return batches
    return batches


def _quantize_int8(source: Path, target: Path, batches: list[dict[str, np.ndarray]]) -> None:
    """Quantise the float32 export ``source`` to ``target``: int8 convolutions (QDQ), activation
    ranges from ``batches`` (min/max over them), metadata carried over with precision int8."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    # Convolutions only: the attention's score products and softmax stay float32. Min/max
    # ranges: the 99.99th percentile lost 0.1 dB more hole PSNR on held-out photos.
    with quiet_loggers("", level=logging.ERROR):  # its advice to pre-process is for other models
        quantize_static(
            str(source),
            str(target),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    metadata = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}
    model = onnx.load(str(target))
    _set_metadata(model, {**metadata, "deepfill.precision": "int8"})
    onnx.save(model, str(target))


def _optimize(model) -> None:
    """Fold constants and clean up the exported graph ``model`` (an ``onnx_ir.Model``) in place.

    Everything that depends on the weights alone (the upsampling layers' phase kernels) becomes
    a constant too: the folding limits are raised from onnxscript's defaults, which leave
    tensors above 8192 values to every run. Run once: the exporter's own pass is switched off
    (the paper's model exports in about 43 s instead of 48 s, the same graph). Without the
    pattern rewriter the export took 34 s, but onnxruntime's peak at 1024x1024 grew from about
    745 to 848 MiB (the memory test's limit), so the rewriter stays."""
    import onnxscript.optimizer

    onnxscript.optimizer.optimize(model, input_size_limit=1 << 24, output_size_limit=1 << 24)


def export_onnx(
    generator: InpaintGenerator,
    output: str | Path,
    precision: str = "fp32",
    check_size: tuple[int, int] = (256, 256),
    attention_block_mb: float | None = None,
    calibration: str | Path | None = None,
) -> ExportReport:
    """Export ``generator`` to the ONNX file ``output`` and check it with onnxruntime.

    precision: ``"fp32"``, ``"fp16"`` or ``"int8"`` (see the module docstring). check_size:
    (H, W) of the check run (a batch of two, different masks), multiples of
    ``generator.multiple``; int8 calibrates at that size too. calibration: int8 only, a folder
    of photos for :func:`calibration_batches` (None: the embedded training photos); an int8
    export must also stay within :data:`INT8_HOLE_TOLERANCE` of PyTorch on two of them.
    attention_block_mb: the exported contextual attention's budget per block of foreground
    positions (MiB of its largest score buffer; several such buffers are alive at once): it sets
    the attention's peak memory at any input size. None: 32 MiB, or 512 positions per block
    where that is more (``deepfill.models.attention_export``'s defaults: at large sizes smaller
    blocks are slow). The file is
    written atomically, and only when onnxruntime's ``x_stage2`` matches the PyTorch generator's
    within :data:`TOLERANCE`; otherwise :class:`RuntimeError` and nothing is written."""
    try:
        import onnxscript.optimizer  # noqa: F401  (checked here: _optimize needs it after the trace)
    except ImportError:
        raise UserError(_MISSING.format(name="onnxscript")) from None
    ort = import_onnxruntime()
    if precision not in EXPORT_PRECISIONS:
        raise UserError(f"precision: must be one of {', '.join(EXPORT_PRECISIONS)}, got {precision!r}")
    output = Path(output)
    if output.suffix.lower() != ".onnx":
        raise UserError(f"output: expected a file name ending in .onnx, got {output}")
    writable_file(output, "output")
    multiple = generator.multiple
    if any(side % multiple or side < multiple for side in check_size):
        raise UserError(f"check_size: must be multiples of {multiple}, got {tuple(check_size)}")
    block = attention_block_mb
    if block is not None and (isinstance(block, bool) or not isinstance(block, int | float) or not block > 0):
        raise UserError(f"attention_block_mb: expected a number of MiB > 0, got {block!r}")
    if calibration is not None and precision != "int8":
        raise UserError(f"calibration: only an int8 export is calibrated, not {precision}")
    # Read the calibration photos before the long trace: a bad folder fails at once.
    batches = calibration_batches(calibration, tuple(check_size)) if precision == "int8" else []
    start = time.perf_counter()
    reference = copy.deepcopy(generator).cpu().float().eval()
    for layer in reference.modules():
        if isinstance(layer, ContextualAttention):
            layer.export_chunk_bytes = None if block is None else max(1, int(block * 2**20))
    dtype = torch.float16 if precision == "fp16" else torch.float32
    # Exporting reads the weights without changing them: only fp16 needs a copy of its own.
    form = _ExportForm(
        reference if dtype == torch.float32 else copy.deepcopy(reference).to(dtype), dtype
    ).eval()
    example = _check_inputs(reference, (2 * multiple * 4, 3 * multiple * 4))
    with torch.no_grad(), warnings.catch_warnings(), quiet_loggers("onnx_ir", "onnxscript", "torch.onnx"):
        # The exporter's notes on axis names it merged are about its own bookkeeping.
        warnings.filterwarnings("ignore", message=".*axis name.*")
        program = torch.onnx.export(
            form,
            example,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            opset_version=ONNX_OPSET,
            dynamo=True,
            dynamic_shapes=_dynamic_shapes(multiple),
            custom_translation_table={torch.ops.aten.threshold.default: _threshold_translation()},
            optimize=False,
            verbose=False,
        )
        _optimize(program.model)
    int8_diff = None
    traced = "fp32" if precision == "int8" else precision  # what the graph computes in
    with atomic_path(output) as final:
        _write_model(program, final, reference, traced, attention_block_mb)
        image, mask = _check_inputs(reference, tuple(check_size))
        session = ort.InferenceSession(str(final), providers=["CPUExecutionProvider"])
        got = session.run(None, {"image": image.numpy(), "mask": mask.numpy()})
        with torch.no_grad():
            expected = reference(image, mask)
        diff = float(np.abs(got[1] - expected[1].numpy()).max())
        if not diff <= TOLERANCE[traced]:
            raise RuntimeError(
                f"export check failed: onnxruntime's x_stage2 differs from PyTorch's by {diff:.3g} "
                f"(tolerance {TOLERANCE[traced]:g} for {traced}); nothing was written"
            )
        if precision == "int8":
            quantized = final.with_name(final.name + ".int8")
            try:
                _quantize_int8(final, quantized, batches)
                os.replace(quantized, final)
            finally:
                quantized.unlink(missing_ok=True)
            int8_diff = _hole_difference(ort, final, reference, batches[:2])
            if not int8_diff <= INT8_HOLE_TOLERANCE:
                raise RuntimeError(
                    f"export check failed: the int8 model's x_stage2 differs from PyTorch's by "
                    f"{int8_diff:.3g} in the holes of calibration photos (mean abs; tolerance "
                    f"{INT8_HOLE_TOLERANCE:g}); nothing was written: export fp32 or fp16, or calibrate on "
                    "photos like those the model fills (calibration=<folder>)"
                )
    return ExportReport(
        path=output,
        precision=precision,
        megabytes=output.stat().st_size / 2**20,
        seconds=time.perf_counter() - start,
        check_size=tuple(check_size),
        max_abs_diff=diff,
        int8_hole_diff=int8_diff,
    )


def _hole_difference(
    ort, path: Path, reference: InpaintGenerator, batches: list[dict[str, np.ndarray]]
) -> float:
    """Mean abs difference of x_stage2 in the holes: the file ``path`` against ``reference``."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    errors = []
    for batch in batches:
        got = session.run(None, batch)[1]
        with torch.no_grad():
            expected = reference(torch.from_numpy(batch["image"]), torch.from_numpy(batch["mask"]))[1].numpy()
        hole = np.broadcast_to(batch["mask"] > 0.5, got.shape)
        errors.append(np.abs(got - expected)[hole])
    return float(np.concatenate(errors).mean())


class OnnxGenerator:
    """An exported generator run by onnxruntime; called like :class:`InpaintGenerator`.

    ``generator(image, mask) -> (x_stage1, x_stage2, offsets)`` with image (N,3,H,W) in [-1,1]
    and mask (1 or N,1,H,W), 1 = hole, as tensors; H and W multiples of :attr:`multiple`.
    device: ``"cpu"``, or ``"cuda"`` when onnxruntime has the CUDA execution provider.
    threads: onnxruntime's intra-op threads (None: its default, one per core)."""

    def __init__(
        self, path: str | Path, device: str | torch.device = "cpu", threads: int | None = None
    ) -> None:
        ort = import_onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"weights: no such file: {self.path}")
        self.device = torch.device(device)
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UserError(
                    "device: this onnxruntime has no CUDA execution provider (pip install onnxruntime-gpu), "
                    "or use device=cpu"
                )
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        options.log_severity_level = 3  # onnxruntime's warnings are not the user's business
        if self.device.type == "cpu":
            _use_exact_size_arena(ort, options)
        else:  # the CPU provider only runs what the GPU's lacks: no arena for it
            options.enable_cpu_mem_arena = False
        # No buffer reuse across nodes: onnxruntime's planner hands a freed buffer to a later
        # output of the same size, which keeps every stage-1 decoder buffer allocated until the
        # stage-2 decoder (same shapes) runs, through the whole attention loop. Without it the
        # paper's model held 0.76 GiB at 1024² against 2.88 GiB, at the same speed.
        options.enable_mem_reuse = False
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own types for unreadable models
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(f"weights: {self.path} is not a readable ONNX model ({first})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        inputs = tuple(i.name for i in self.session.get_inputs())
        outputs = tuple(o.name for o in self.session.get_outputs())
        if meta.get("deepfill.format") != ONNX_FORMAT or inputs != INPUT_NAMES or outputs != OUTPUT_NAMES:
            raise UserError(
                f"weights: {self.path} is an ONNX model but not a DeepFill generator export "
                f"(inputs {list(inputs)}, outputs {list(outputs)}); make one with deepfill-export"
            )
        self.multiple = int(meta["deepfill.multiple"])
        self.precision = meta.get("deepfill.precision", "fp32")
        self.config = json.loads(meta.get("deepfill.generator", "{}"))
        # "v1" or "v2"; exports made before the metadata held it are read off the settings.
        self.family = meta.get("deepfill.family") or ("v2" if self.config.get("gated") else "v1")

    def __repr__(self) -> str:
        return f"OnnxGenerator({str(self.path)!r}, precision={self.precision}, device={self.device})"

    def eval(self) -> OnnxGenerator:
        return self

    def check_inputs(self, image: torch.Tensor, mask: torch.Tensor, check_mask: bool = True) -> None:
        """The same checks and messages as :meth:`InpaintGenerator.check_inputs`."""
        check_generator_inputs(image, mask, self.multiple, check_mask)

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, check_mask: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.check_inputs(image, mask, check_mask)
        n = image.shape[0]
        feed = {
            "image": image.detach().float().cpu().contiguous().numpy(),
            "mask": mask.detach().float().cpu().expand(n, -1, -1, -1).contiguous().numpy(),
        }
        try:
            outputs = self.session.run(None, feed)
        except Exception as error:  # onnxruntime's own error types
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise RuntimeError(
                f"onnxruntime could not run {self.path.name} on a {n}x3x{image.shape[-2]}x{image.shape[-1]} "
                f"input: {first}"
            ) from None
        return tuple(torch.from_numpy(o).to(self.device) for o in outputs)
