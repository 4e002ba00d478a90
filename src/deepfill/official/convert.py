"""Load the official DeepFill weights (the released TF checkpoints of v1, ``snap-0``, and of v2):
the generator, and from training checkpoints that hold them, the critics (v1's two WGAN critics,
v2's SN-PatchGAN critic).

Both families use the same variable names; v2's stage 2 reads 3 channels where v1's reads 5,
which tells them apart (:func:`official_family`).

The official networks were trained on **BGR** images (read with OpenCV). The loaded generator
takes **RGB**: the converter reverses the colour channels of the inputs of the first
convolutions (``conv1``, ``xconv1``, ``pmconv1``) and of the outputs of the last ones
(``conv17``, ``allconv17``), which gives exactly the official function on channel-swapped images.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from deepfill.models.critics import Critic, GlobalCritic, LocalCritic
from deepfill.models.generator import InpaintGenerator
from deepfill.models.sn_patchgan import SNPatchGANCritic
from deepfill.official.tf_checkpoint import read_tf_checkpoint
from deepfill.utils.checkpoints import check_state_dict, read_checkpoint
from deepfill.utils.errors import UserError
from deepfill.utils.files import save_torch, writable_file

__all__ = [
    "FAMILIES",
    "convert_checkpoint",
    "critic_variable_names",
    "load_official",
    "load_official_critics",
    "load_official_sn_patchgan",
    "load_official_v1",
    "load_official_v2",
    "official_critic_state_dict",
    "official_family",
    "official_sn_patchgan_state_dict",
    "official_state_dict",
    "sn_patchgan_variable_names",
    "tf_variable_names",
]

SCOPE = "inpaint_net"
CRITIC_SCOPE = "discriminator"
SN_PATCHGAN_SCOPE = "discriminator/sn_patch_gan"
_FIRST = ("conv1", "xconv1", "pmconv1")
_LAST = ("conv17", "allconv17")
FAMILIES = {"v1": "DeepFill v1, contextual attention", "v2": "DeepFill v2, gated convolution"}


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


def _state_from_variables(
    variables: dict[str, np.ndarray],
    names: dict[str, str],
    expected: dict[str, tuple[int, ...]],
    arrange: Callable[[str, np.ndarray], np.ndarray],
) -> dict[str, torch.Tensor]:
    """A state dict from official TF variables: ``names`` maps each tensor to its variable,
    ``expected`` gives its shape; kernels go from HWIO to OIHW, then ``arrange(name, array)``
    makes the network's own changes (colour order, layouts). One ``ValueError`` lists every
    missing variable, or every shape mismatch."""
    missing = sorted(tf for tf in names.values() if tf not in variables)
    if missing:
        raise ValueError(f"missing {len(missing)} official variable(s): {', '.join(missing)}")
    state, mismatched = {}, []
    for name, tf_name in names.items():
        array = np.asarray(variables[tf_name], dtype=np.float32)
        if array.ndim == 4:
            array = array.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        array = arrange(name, array)
        if array.shape != expected[name]:
            mismatched.append(f"{tf_name} {array.shape} != {expected[name]}")
            continue
        state[name] = torch.from_numpy(np.ascontiguousarray(array))
    if mismatched:
        raise ValueError(f"{len(mismatched)} shape mismatch(es): {'; '.join(mismatched)}")
    return state


def _rgb_inputs(array: np.ndarray) -> np.ndarray:
    """A kernel (OIHW) whose first 3 input channels are an image: BGR -> RGB."""
    if array.ndim != 4 or array.shape[1] < 3:
        return array  # not such a kernel: its shape check reports it
    return array[:, [2, 1, 0, *range(3, array.shape[1])]]


def official_state_dict(
    variables: dict[str, np.ndarray], generator: InpaintGenerator, bgr_to_rgb: bool = True
) -> dict[str, torch.Tensor]:
    """Build a state dict for ``generator`` from official TF variables (kernels HWIO).

    Raises ``ValueError`` listing every missing variable or every shape mismatch.
    """

    def arrange(name: str, array: np.ndarray) -> np.ndarray:
        layer = name.split(".")[1]
        if bgr_to_rgb and layer in _FIRST:
            array = _rgb_inputs(array)
        if bgr_to_rgb and layer in _LAST:
            array = array[::-1]
        return array

    expected = {name: tuple(p.shape) for name, p in generator.named_parameters()}
    return _state_from_variables(variables, tf_variable_names(generator), expected, arrange)


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
    channels = critic.convs[-1].out_channels
    side = math.isqrt(critic.dense.in_features // channels)

    def arrange(name: str, array: np.ndarray) -> np.ndarray:
        if bgr_to_rgb and name == "convs.0.weight" and array.ndim == 4:
            return array[:, ::-1]
        if name == "dense.weight" and array.shape == (side * side * channels, 1):
            return array.reshape(side, side, channels).transpose(2, 0, 1).reshape(1, -1)
        return array

    expected = {name: tuple(p.shape) for name, p in critic.named_parameters()}
    return _state_from_variables(variables, critic_variable_names(critic, which), expected, arrange)


def sn_patchgan_variable_names(critic: SNPatchGANCritic) -> dict[str, str]:
    """Map each tensor of the SN-PatchGAN critic's state dict (parameters and the spectral
    norms' ``u``) to its official TF variable name, ``discriminator/sn_patch_gan/conv<k>/...``."""
    mapping = {}
    for name in critic.state_dict():
        _, index, kind = name.split(".")
        leaf = {"weight": "kernel", "bias": "bias", "u": "kernel_sn/u"}[kind]
        mapping[name] = f"{SN_PATCHGAN_SCOPE}/conv{int(index) + 1}/{leaf}"
    return mapping


def official_sn_patchgan_state_dict(
    variables: dict[str, np.ndarray], critic: SNPatchGANCritic, bgr_to_rgb: bool = True
) -> dict[str, torch.Tensor]:
    """A state dict for ``critic`` from official TF variables (kernels HWIO; ``u`` (1, C_out)
    in both layouts). Its input is ``[image, mask]``: RGB reverses the image's 3 channels."""

    def arrange(name: str, array: np.ndarray) -> np.ndarray:
        return _rgb_inputs(array) if bgr_to_rgb and name == "convs.0.weight" else array

    expected = {name: tuple(t.shape) for name, t in critic.state_dict().items()}
    return _state_from_variables(variables, sn_patchgan_variable_names(critic), expected, arrange)


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


def official_family(variables: dict[str, np.ndarray]) -> str | None:
    """``"v1"`` or ``"v2"`` for official generator variables (names without ``:0``), None when
    they hold no ``xconv1`` kernel: v2's stage 2 reads the 3-channel composite, v1's 5 channels."""
    kernel = variables.get(f"{SCOPE}/xconv1/kernel")
    if kernel is None or np.ndim(kernel) != 4:
        return None
    return "v2" if np.shape(kernel)[2] == 3 else "v1"


def _state_family(state: dict) -> str:
    """The family of a generator state dict (its stage-2 input channels)."""
    kernel = state.get("refine.xconv1.weight")
    return "v2" if isinstance(kernel, torch.Tensor) and kernel.ndim == 4 and kernel.shape[1] == 3 else "v1"


def _check_family(generator: InpaintGenerator, family: str | None, path: Path) -> InpaintGenerator:
    if family is not None and generator.family != family:
        raise UserError(
            f"weights: {path} holds {FAMILIES[generator.family]} weights, not {family} "
            f"({FAMILIES.get(family, family)}); use them with model=deepfill_{generator.family}"
        )
    return generator


def _converted_generator(path: Path, generator_kwargs: dict) -> InpaintGenerator:
    """A generator from a ``.pt`` of ``deepfill-convert`` (or any ``{"state_dict": ...}``): its
    stored constructor arguments, or for older files the width and family read off the kernels."""
    payload = read_checkpoint(path, "weights")
    state = payload.get("state_dict", payload)
    config = dict(payload.get("config") or {})
    first = state.get("coarse.conv1.weight")
    if not config and isinstance(first, torch.Tensor) and first.ndim == 4:
        config["cnum"] = int(first.shape[0])
        config["gated"] = _state_family(state) == "v2"
    generator = InpaintGenerator(**(config | generator_kwargs))
    check_state_dict(generator, state, "weights", path)
    generator.load_state_dict(state)
    return generator


def load_official(
    path: str | os.PathLike,
    bgr_to_rgb: bool = True,
    backend: str = "auto",
    family: str | None = None,
    **generator_kwargs,
) -> InpaintGenerator:
    """Load official weights, v1 or v2 (told apart by the file), into an
    :class:`InpaintGenerator` (RGB input by default).

    Args:
        path: a TF checkpoint folder or prefix (``.../snap-0``), an ``.npz`` of
            ``{tf_variable_name: array}``, or a ``.pt`` written by ``deepfill-convert`` (its
            generator settings, e.g. ``cnum``, come from the file).
        bgr_to_rgb: permute colour channels so the model takes RGB, as every other part of
            this project does. ``False`` keeps the official BGR convention.
        backend: TF checkpoint reader (see :func:`deepfill.official.tf_checkpoint.read_tf_checkpoint`).
        family: ``"v1"`` or ``"v2"`` to require that family (one line naming the family the file
            holds otherwise); None: either.
        generator_kwargs: passed to :class:`InpaintGenerator` (e.g. ``attention={"chunk_size": ...}``);
            ``cnum`` and ``gated`` default to what the file holds.
    """
    if family not in (None, *FAMILIES):
        raise ValueError(f"family must be one of {sorted(FAMILIES)} or None, got {family!r}")
    p = Path(path)
    if p.suffix == ".pt":
        return _check_family(_converted_generator(p, generator_kwargs), family, p).eval()
    # Both families' variables have these names (a narrow generator lists them).
    dilations = generator_kwargs.get("dilations", (2, 4, 8, 16))
    names = tf_variable_names(InpaintGenerator(cnum=4, dilations=dilations, channels_last=False))
    variables = _read_variables(p, names.values(), backend)
    detected = official_family(variables) or "v1"
    settings = {"gated": detected == "v2"}
    first = variables.get(f"{SCOPE}/conv1/kernel")
    if first is not None and np.ndim(first) == 4:
        settings["cnum"] = int(np.shape(first)[3])
    generator = InpaintGenerator(**(settings | generator_kwargs))
    _check_family(generator, family, p)
    generator.load_state_dict(official_state_dict(variables, generator, bgr_to_rgb=bgr_to_rgb))
    return generator.eval()


def load_official_v1(
    path: str | os.PathLike, bgr_to_rgb: bool = True, backend: str = "auto", **generator_kwargs
) -> InpaintGenerator:
    """:func:`load_official` for DeepFill v1 weights (one line naming the family otherwise)."""
    return load_official(path, bgr_to_rgb, backend, "v1", **generator_kwargs)


def load_official_v2(
    path: str | os.PathLike, bgr_to_rgb: bool = True, backend: str = "auto", **generator_kwargs
) -> InpaintGenerator:
    """:func:`load_official` for DeepFill v2 weights (one line naming the family otherwise)."""
    return load_official(path, bgr_to_rgb, backend, "v2", **generator_kwargs)


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


def load_official_sn_patchgan(
    path: str | os.PathLike, input_size: int = 256, bgr_to_rgb: bool = True, backend: str = "auto"
) -> SNPatchGANCritic:
    """Load the official v2 critic (SN-PatchGAN, with its spectral norms' ``u``) from a TF
    checkpoint folder/prefix or an ``.npz`` holding the ``discriminator/sn_patch_gan/...``
    variables (training snapshots do). RGB input by default, like the generator."""
    critic = SNPatchGANCritic(input_size)
    variables = _read_variables(Path(path), sn_patchgan_variable_names(critic).values(), backend)
    critic.load_state_dict(official_sn_patchgan_state_dict(variables, critic, bgr_to_rgb))
    return critic


def convert_checkpoint(
    checkpoint: str | os.PathLike, output: str | os.PathLike, keep_bgr: bool = False, backend: str = "auto"
) -> tuple[int, str]:
    """Write the official generator of ``checkpoint`` (TF folder, prefix or ``.npz``, v1 or v2) to
    ``output`` as a PyTorch file this project loads (``state_dict``, ``config``, ``source``,
    ``channel_order``, ``family``), atomically; RGB input unless ``keep_bgr``. Returns its
    parameter count and family (``"v1"`` or ``"v2"``)."""
    out = Path(output)
    writable_file(out, "output")  # before the (slow) read of the checkpoint
    generator = load_official(checkpoint, bgr_to_rgb=not keep_bgr, backend=backend)
    payload = {
        "state_dict": generator.state_dict(),
        "config": generator.config,
        "source": str(checkpoint),
        "channel_order": "bgr" if keep_bgr else "rgb",
        "family": generator.family,
    }
    save_torch(payload, out)
    return sum(p.numel() for p in generator.parameters()), generator.family
