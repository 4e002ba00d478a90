"""Inpainting one image with a trained or official generator: what ``deepfill-inpaint`` runs for
each file, for use from Python and the notebooks.

    generator = load_generator("places2_v1.pt")
    result = inpaint_array(generator, image, hole)   # image: (H,W,3) uint8, hole: (H,W) bool
    Image.fromarray(result.completed).save("filled.png")
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepfill.models import InpaintGenerator, composite, flow_to_image, inpaint_padded, set_cpu_chunk_bytes
from deepfill.models.layers import resize_nearest
from deepfill.utils.checkpoints import check_state_dict, read_checkpoint
from deepfill.utils.errors import UserError
from deepfill.utils.images import to_tensor, to_uint8
from deepfill.utils.precision import PRECISIONS, autocast, check_compile, check_precision

__all__ = [
    "PRECISIONS",
    "Inpainting",
    "autocast",
    "check_compile",
    "check_precision",
    "generator_device",
    "generator_from_checkpoint",
    "inpaint_array",
    "load_generator",
]


def generator_from_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> InpaintGenerator:
    """The trained generator of a training checkpoint (``.ckpt`` of ``deepfill-train``): rebuilt
    from the hyper-parameters the run saved (``hyper_parameters.generator``) and its
    ``generator_ema.*`` tensors (the average of its weights, when the run kept one:
    ``model.ema_decay``) or else its ``generator.*`` tensors, in eval mode. Read without
    Lightning, which a command that only inpaints need not load."""
    checkpoint = read_checkpoint(path, "weights", weights_only=False)
    config = (checkpoint.get("hyper_parameters") or {}).get("generator")
    if config is None or not isinstance(checkpoint.get("state_dict"), dict):
        raise UserError(f"weights: {path} is not a training checkpoint of this project (no generator)")
    generator = InpaintGenerator(**config)
    has_average = any(k.startswith("generator_ema.") for k in checkpoint["state_dict"])
    prefix = "generator_ema." if has_average else "generator."
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    check_state_dict(generator, state, "weights", path)
    generator.load_state_dict(state)
    return generator.to(map_location).eval()


def load_generator(
    weights: str | Path, device: str | torch.device = "cpu", cpu_chunk_bytes: int | None = None
) -> InpaintGenerator:
    """A Lightning checkpoint of training (``.ckpt``), converted official weights (``.pt``),
    an official TF checkpoint (folder or prefix) or an ``.npz`` of official variables, of
    DeepFill v1 or v2 (the family is read off the file: ``generator.family``); or an
    ONNX export (``.onnx``, from ``deepfill-export``) as a :class:`deepfill.deploy.OnnxGenerator`,
    run by onnxruntime and called the same way. ``cpu_chunk_bytes``: the contextual attention's
    CPU chunk budget (:func:`deepfill.models.set_cpu_chunk_bytes`; None: its default)."""
    from deepfill.official.convert import load_official
    from deepfill.official.tf_checkpoint import CheckpointError

    path = Path(weights)
    if path.suffix.lower() == ".onnx":
        from deepfill.deploy import OnnxGenerator

        return OnnxGenerator(path, device)
    if path.suffix == ".ckpt":
        generator = generator_from_checkpoint(path)
    else:
        try:
            generator = load_official(path)
        except CheckpointError as error:
            if not path.is_dir():
                raise
            raise CheckpointError(
                f"weights: the folder {path} holds no weights: expected a training checkpoint (.ckpt), "
                f"converted weights (.pt), an .npz, or an official TF checkpoint folder ({error})"
            ) from None
    set_cpu_chunk_bytes(generator, cpu_chunk_bytes)
    return generator.to(device).eval()


def generator_device(generator) -> torch.device:
    """Where ``generator`` runs: its parameters' device, or an ONNX model's ``device``."""
    if isinstance(generator, nn.Module):
        return next(generator.parameters()).device
    return generator.device


@dataclass
class Inpainting:
    """One inpainted image; every picture (H,W,3) uint8 at the input's size.

    completed: the result (refined stage inside the hole, the input's pixels outside, exactly);
    coarse: the coarse stage composited the same way; refined: the refined stage everywhere;
    flow: where contextual attention copied from (colour = direction, brightness = distance);
    seconds: the generator's time; device: where it ran; family: the generator's, ``"v1"`` or
    ``"v2"``."""

    completed: np.ndarray
    coarse: np.ndarray
    refined: np.ndarray
    flow: np.ndarray
    seconds: float
    device: str
    family: str = "v1"


@torch.no_grad()
def inpaint_array(
    generator: InpaintGenerator, image: np.ndarray, hole: np.ndarray, precision: str = "fp32"
) -> Inpainting:
    """Fill ``hole`` ((H,W), nonzero = hole) of ``image`` ((H,W,3) uint8, any size: padded to the
    generator's multiple and cropped back) on the generator's device, in ``precision``
    (:data:`PRECISIONS`). The known pixels of ``completed`` are the input's, exactly."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H,W,3) uint8, got {image.shape} {image.dtype}")
    if hole.shape != image.shape[:2]:
        raise ValueError(f"hole must be (H,W) = {image.shape[:2]}, got {hole.shape}")
    device = generator_device(generator)
    if precision != "fp32" and not isinstance(generator, nn.Module):
        raise ValueError(
            f"precision: an ONNX model runs in the precision it was exported in ({generator.precision}); "
            f"got precision={precision!r}, use fp32 (or export with precision=fp16)"
        )
    context = autocast(device, precision)
    x = to_tensor(image).unsqueeze(0).to(device)
    mask = torch.from_numpy(np.asarray(hole, dtype=bool).astype(np.float32))[None, None].to(device)
    start = time.perf_counter()
    with context:
        x1, x2, completed, offsets = inpaint_padded(generator, x, mask)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    flow = resize_nearest(flow_to_image(offsets), tuple(x.shape[-2:]), align_corners=False)
    return Inpainting(
        completed=to_uint8(completed[0]),
        coarse=to_uint8(composite(x1, x, mask)[0]),
        refined=to_uint8(x2[0]),
        flow=to_uint8(flow[0]),
        seconds=seconds,
        device=str(device),
        family=getattr(generator, "family", "v1"),
    )
