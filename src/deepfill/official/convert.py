"""Load the official DeepFill v1 weights (the released TF ``snap-0`` checkpoints): the generator
and, from checkpoints that hold them, the two critics.

The official networks were trained on **BGR** images (read with OpenCV). The loaded generator
takes **RGB**: the converter reverses the colour channels of the inputs of the first
convolutions (``conv1``, ``xconv1``, ``pmconv1``) and of the outputs of the last ones
(``conv17``, ``allconv17``), which gives exactly the official function on channel-swapped images.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from deepfill.models.critics import Critic, GlobalCritic, LocalCritic
from deepfill.models.generator import InpaintGenerator
from deepfill.official.tf_checkpoint import read_tf_checkpoint
from deepfill.utils.checkpoints import check_state_dict, read_checkpoint
from deepfill.utils.errors import UserError
from deepfill.utils.files import save_torch, writable_file

__all__ = [
    "convert_checkpoint",
    "critic_variable_names",
    "load_official_critics",
    "load_official_v1",
    "official_critic_state_dict",
    "official_state_dict",
    "tf_variable_names",
]

SCOPE = "inpaint_net"
CRITIC_SCOPE = "discriminator"
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


def critic_variable_names(critic: Critic, which: str) -> dict[str, str]:
    """Map each parameter of a critic (``which`` = ``"global"`` or ``"local"``) to its official TF
    variable name: ``discriminator/discriminator_<which>/conv<k>/...`` and
    ``discriminator/dout_<which>_fc/...``."""
    if which not in ("global", "local"):
        raise ValueError(f"critic must be 'global' or 'local', got {which!r}")
    mapping = {}
    for name, _ in critic.named_parameters():
        kind = "kernel" if name.endswith("weight") else "bias"
        if name.startswith("convs."):
            layer = f"discriminator_{which}/conv{int(name.split('.')[1]) + 1}"
        else:
            layer = f"dout_{which}_fc"
        mapping[name] = f"{CRITIC_SCOPE}/{layer}/{kind}"
    return mapping


def official_critic_state_dict(
    variables: dict[str, np.ndarray], critic: Critic, which: str, bgr_to_rgb: bool = True
) -> dict[str, torch.Tensor]:
    """A state dict for ``critic`` from official TF variables (conv kernels HWIO; the dense
    kernel ``[H*W*C, 1]`` over NHWC-flattened features, reordered here to NCHW)."""
    names = critic_variable_names(critic, which)
    params = dict(critic.named_parameters())
    missing = sorted(tf for tf in names.values() if tf not in variables)
    if missing:
        raise ValueError(f"missing {len(missing)} official variable(s): {', '.join(missing)}")
    channels = critic.convs[-1].out_channels
    side = math.isqrt(critic.dense.in_features // channels)
    state, mismatched = {}, []
    for name, tf_name in names.items():
        array = np.asarray(variables[tf_name], dtype=np.float32)
        if array.ndim == 4:
            array = array.transpose(3, 2, 0, 1)  # HWIO -> OIHW
            if bgr_to_rgb and name == "convs.0.weight":
                array = array[:, ::-1]
        elif name == "dense.weight" and array.shape == (side * side * channels, 1):
            array = array.reshape(side, side, channels).transpose(2, 0, 1).reshape(1, -1)
        expected = tuple(params[name].shape)
        if array.shape != expected:
            mismatched.append(f"{tf_name} {array.shape} != {expected}")
            continue
        state[name] = torch.from_numpy(np.ascontiguousarray(array))
    if mismatched:
        raise ValueError(f"{len(mismatched)} shape mismatch(es): {'; '.join(mismatched)}")
    return state


def _read_variables(path: Path, wanted, backend: str) -> dict[str, np.ndarray]:
    """Official variables from an ``.npz`` or a TF checkpoint folder or prefix."""
    if path.suffix == ".npz":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such .npz file")
        try:
            with np.load(path, allow_pickle=False) as data:
                return _normalise_npz_names({k: data[k] for k in data.files})
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise UserError(
                f"{path}: not a readable .npz of official variables (truncated or another format?): "
                f"{str(error).splitlines()[0][:120] if str(error) else type(error).__name__}"
            ) from None
    if not path.exists() and not Path(f"{path}.index").exists():
        raise FileNotFoundError(f"{path}: no such checkpoint folder or prefix")
    return read_tf_checkpoint(path, names=wanted, backend=backend)


def _converted_generator(path: Path, generator_kwargs: dict) -> InpaintGenerator:
    """A generator from a ``.pt`` of ``deepfill-convert`` (or any ``{"state_dict": ...}``): its
    stored constructor arguments, or for older files the width read off the first kernel."""
    payload = read_checkpoint(path, "weights")
    state = payload.get("state_dict", payload)
    config = dict(payload.get("config") or {})
    first = state.get("coarse.conv1.weight")
    if not config and isinstance(first, torch.Tensor) and first.ndim == 4:
        config["cnum"] = int(first.shape[0])
    generator = InpaintGenerator(**(config | generator_kwargs))
    check_state_dict(generator, state, "weights", path)
    generator.load_state_dict(state)
    return generator


def load_official_v1(
    path: str | os.PathLike, bgr_to_rgb: bool = True, backend: str = "auto", **generator_kwargs
) -> InpaintGenerator:
    """Load official weights into an :class:`InpaintGenerator` (RGB input by default).

    Args:
        path: a TF checkpoint folder or prefix (``.../snap-0``), an ``.npz`` of
            ``{tf_variable_name: array}``, or a ``.pt`` written by ``deepfill-convert`` (its
            generator settings, e.g. ``cnum``, come from the file).
        bgr_to_rgb: permute colour channels so the model takes RGB, as every other part of
            this project does. ``False`` keeps the official BGR convention.
        backend: TF checkpoint reader (see :func:`deepfill.official.tf_checkpoint.read_tf_checkpoint`).
        generator_kwargs: passed to :class:`InpaintGenerator` (e.g. ``attention={"chunk_size": ...}``).
    """
    p = Path(path)
    if p.suffix == ".pt":
        return _converted_generator(p, generator_kwargs).eval()
    generator = InpaintGenerator(**generator_kwargs)
    variables = _read_variables(p, tf_variable_names(generator).values(), backend)
    generator.load_state_dict(official_state_dict(variables, generator, bgr_to_rgb=bgr_to_rgb))
    return generator.eval()


def load_official_critics(
    path: str | os.PathLike,
    image_size: int = 256,
    local_size: int = 128,
    bgr_to_rgb: bool = True,
    backend: str = "auto",
) -> tuple[GlobalCritic, LocalCritic]:
    """Load the official critics (global, local) from a TF checkpoint folder/prefix or an
    ``.npz`` that holds the ``discriminator/...`` variables (training snapshots do), e.g. to
    fine-tune a released model adversarially. RGB input by default, like the generator."""
    global_critic, local_critic = GlobalCritic(image_size), LocalCritic(local_size)
    wanted = [*critic_variable_names(global_critic, "global").values()]
    wanted += critic_variable_names(local_critic, "local").values()
    variables = _read_variables(Path(path), wanted, backend)
    for critic, which in ((global_critic, "global"), (local_critic, "local")):
        critic.load_state_dict(official_critic_state_dict(variables, critic, which, bgr_to_rgb))
    return global_critic, local_critic


def convert_checkpoint(
    checkpoint: str | os.PathLike, output: str | os.PathLike, keep_bgr: bool = False, backend: str = "auto"
) -> int:
    """Write the official generator of ``checkpoint`` (TF folder, prefix or ``.npz``) to ``output``
    as a PyTorch file this project loads (``state_dict``, ``config``, ``source``,
    ``channel_order``), atomically; RGB input unless ``keep_bgr``. Returns its parameter count."""
    out = Path(output)
    writable_file(out, "output")  # before the (slow) read of the checkpoint
    generator = load_official_v1(checkpoint, bgr_to_rgb=not keep_bgr, backend=backend)
    payload = {
        "state_dict": generator.state_dict(),
        "config": generator.config,
        "source": str(checkpoint),
        "channel_order": "bgr" if keep_bgr else "rgb",
    }
    save_torch(payload, out)
    return sum(p.numel() for p in generator.parameters())
