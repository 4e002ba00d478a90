"""``deepfill-export``: the whole generator, contextual attention included, as one ONNX file.

    deepfill-export weights=places2_v1.pt output=places2_v1.onnx
    deepfill-export weights=outputs/.../checkpoints/best.ckpt output=model_fp16.onnx precision=fp16
    deepfill-export weights=places2_v1.pt output=model_int8.onnx precision=int8 calibration=photos/

Any weights ``deepfill-inpaint`` reads. The graph takes any batch size and any height and width
that are multiples of the model's (8 for the paper's model); ``deepfill-inpaint`` and
``deepfill-demo`` run the file with onnxruntime (``weights=model.onnx``). The file is written only
after onnxruntime reproduced the PyTorch generator on a check batch (see
:mod:`deepfill.deploy`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, ListConfig

from deepfill.cli.launch import hydra_command
from deepfill.utils.checkpoints import check_weights_path
from deepfill.utils.errors import UserError

if TYPE_CHECKING:
    from deepfill.deploy import ExportReport

__all__ = ["main", "run"]


def _check_size(value: object) -> tuple[int, int]:
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise UserError(f"check_size: expected [height, width], got {value!r}")
    return int(value[0]), int(value[1])


def run(cfg: DictConfig) -> ExportReport:
    """Export ``cfg.weights`` to ``cfg.output``; returns what was written and checked."""
    value = cfg.check_size
    check_size = _check_size(list(value) if isinstance(value, ListConfig) else value)
    check_weights_path(cfg.weights)
    if Path(cfg.weights).suffix.lower() == ".onnx":
        raise UserError(f"weights: {cfg.weights} is an export already; give the weights it was made from")
    # PyTorch, the model and the exporter, once the simple keys are known to be right.
    from deepfill.deploy import ONNX_OPSET, export_onnx
    from deepfill.inference import load_generator

    generator = load_generator(cfg.weights, "cpu")
    print(f"exporting {cfg.weights} to ONNX (opset {ONNX_OPSET}, {cfg.precision}) ...", flush=True)
    report = export_onnx(
        generator, cfg.output, cfg.precision, check_size, cfg.attention_block_mb, cfg.calibration
    )
    height, width = report.check_size
    int8 = (
        ""
        if report.int8_hole_diff is None
        else f"; int8 within {report.int8_hole_diff:.1e} mean abs in the holes of calibration photos"
    )
    print(
        f"wrote {report.path} ({report.megabytes:.1f} MB, {report.precision}) in {report.seconds:.0f} s; "
        f"onnxruntime matches PyTorch at {height}x{width} (max abs difference {report.max_abs_diff:.1e}"
        f"{' in float32' if int8 else ''}){int8}",
        flush=True,
    )
    return report


main = hydra_command("deepfill-export", "export", run)


if __name__ == "__main__":
    sys.exit(main())
