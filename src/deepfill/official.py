"""Load the official DeepFill v1 weights (the released TF ``snap-0`` checkpoints).

The official networks were trained on **BGR** images (read with OpenCV). The loaded generator
takes **RGB**: the converter reverses the colour channels of the inputs of the first
convolutions (``conv1``, ``xconv1``, ``pmconv1``) and of the outputs of the last ones
(``conv17``, ``allconv17``), which gives exactly the official function on channel-swapped images.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

from .models.generator import InpaintGenerator
from .tf_checkpoint import read_tf_checkpoint

__all__ = ["load_official_v1", "official_state_dict", "tf_variable_names"]

SCOPE = "inpaint_net"
_FIRST = ("conv1", "xconv1", "pmconv1")
_LAST = ("conv17", "allconv17")


def tf_variable_names(generator: InpaintGenerator) -> dict[str, str]:
    """Map each generator parameter name to its official TF variable name."""
    mapping = {}
    for name, _ in generator.named_parameters():
        _stage, layer, *rest = name.split(".")
        kind = "kernel" if rest[-1] == "weight" else "bias"
        if rest[0] == "conv":  # upsampling block: <layer>/<layer>_conv
            mapping[name] = f"{SCOPE}/{layer}/{layer}_conv/{kind}"
        else:
            mapping[name] = f"{SCOPE}/{layer}/{kind}"
    return mapping


def _normalise_npz_names(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Accept ``w:inpaint_net/conv1/kernel:0`` as well as ``inpaint_net/conv1/kernel``."""
    out = {}
    for key, value in arrays.items():
        name = key[2:] if key.startswith("w:") else key
        name = name[:-2] if name.endswith(":0") else name
        out[name] = value
    return out


def official_state_dict(
    variables: dict[str, np.ndarray], generator: InpaintGenerator, bgr_to_rgb: bool = True
) -> dict[str, torch.Tensor]:
    """Build a state dict for ``generator`` from official TF variables (kernels HWIO).

    Raises ``ValueError`` listing every missing variable or every shape mismatch.
    """
    names = tf_variable_names(generator)
    params = dict(generator.named_parameters())
    missing = sorted(tf for tf in names.values() if tf not in variables)
    if missing:
        raise ValueError(f"missing {len(missing)} official variable(s): {', '.join(missing)}")
    state, mismatched = {}, []
    for name, tf_name in names.items():
        array = np.asarray(variables[tf_name], dtype=np.float32)
        if array.ndim == 4:
            array = array.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        expected = tuple(params[name].shape)
        if array.shape != expected:
            mismatched.append(f"{tf_name} {array.shape} != {expected}")
            continue
        layer = name.split(".")[1]
        if bgr_to_rgb and layer in _FIRST and array.ndim == 4:
            array = array[:, [2, 1, 0, *range(3, array.shape[1])]]
        if bgr_to_rgb and layer in _LAST:
            array = array[::-1]
        state[name] = torch.from_numpy(np.ascontiguousarray(array))
    if mismatched:
        raise ValueError(f"{len(mismatched)} shape mismatch(es): {'; '.join(mismatched)}")
    return state


def load_official_v1(
    path: str | os.PathLike, bgr_to_rgb: bool = True, backend: str = "auto", **generator_kwargs
) -> InpaintGenerator:
    """Load official weights into an :class:`InpaintGenerator` (RGB input by default).

    Args:
        path: a TF checkpoint folder or prefix (``.../snap-0``), an ``.npz`` of
            ``{tf_variable_name: array}``, or a ``.pt`` written by ``deepfill-convert``.
        bgr_to_rgb: permute colour channels so the model takes RGB, as every other part of
            this project does. ``False`` keeps the official BGR convention.
        backend: TF checkpoint reader (see :func:`deepfill.tf_checkpoint.read_tf_checkpoint`).
        generator_kwargs: passed to :class:`InpaintGenerator` (e.g. ``attention={"chunk_size": ...}``).
    """
    p = Path(path)
    generator = InpaintGenerator(**generator_kwargs)
    if p.suffix == ".pt":
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such converted weights file")
        payload = torch.load(p, map_location="cpu", weights_only=True)
        state = payload.get("state_dict", payload)
    else:
        if p.suffix == ".npz":
            if not p.is_file():
                raise FileNotFoundError(f"{p}: no such .npz file")
            with np.load(p) as data:
                variables = _normalise_npz_names({k: data[k] for k in data.files})
        else:
            if not p.exists() and not Path(f"{p}.index").exists():
                raise FileNotFoundError(f"{p}: no such checkpoint folder or prefix")
            wanted = tf_variable_names(generator).values()
            variables = read_tf_checkpoint(p, names=wanted, backend=backend)
        state = official_state_dict(variables, generator, bgr_to_rgb=bgr_to_rgb)
    generator.load_state_dict(state)
    return generator.eval()


def main(argv: list[str] | None = None) -> int:
    """``deepfill-convert <tf_checkpoint> <out.pt>``: official TF weights to a PyTorch file."""
    parser = argparse.ArgumentParser(
        prog="deepfill-convert",
        description="Convert an official DeepFill v1 TF checkpoint (or .npz) to a PyTorch state dict.",
    )
    parser.add_argument("checkpoint", help="checkpoint folder, prefix (e.g. .../snap-0) or .npz")
    parser.add_argument("output", help="output .pt file")
    parser.add_argument("--keep-bgr", action="store_true", help="keep the official BGR channel order")
    parser.add_argument("--backend", choices=("auto", "python", "tensorflow"), default="auto")
    args = parser.parse_args(argv)
    try:
        generator = load_official_v1(args.checkpoint, bgr_to_rgb=not args.keep_bgr, backend=args.backend)
    except (OSError, ValueError) as error:
        print(f"deepfill-convert: error: {error}", file=sys.stderr)
        return 2
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    payload = {
        "state_dict": generator.state_dict(),
        "source": str(args.checkpoint),
        "channel_order": "bgr" if args.keep_bgr else "rgb",
    }
    torch.save(payload, tmp)
    os.replace(tmp, out)  # atomic: a crash never leaves a half-written file behind
    count = sum(p.numel() for p in generator.parameters())
    print(f"wrote {out} ({count:,} parameters, {payload['channel_order'].upper()} input)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
