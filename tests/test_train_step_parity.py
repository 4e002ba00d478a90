"""One training step against the official graph (``train_step_256.npz``): every loss term and the
gradients of the generator and critic losses.

Everything comes from the file: batch, bbox, shrink, interpolation factors and weights, so any
file of this format is checked. The losses are computed by the functions the training step calls
(:func:`deepfill.training.losses.generator_loss`, :func:`deepfill.training.losses.critic_loss`,
:func:`deepfill.training.losses.local_patches`), on networks loaded with the project's official loaders.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deepfill.official.convert import critic_variable_names, tf_variable_names
from deepfill.official.goldens import TRAINING_STEP_GOLDEN, training_step_case
from deepfill.selftest import training_step_losses


@pytest.fixture(scope="module")
def step(goldens) -> dict:
    path = goldens / TRAINING_STEP_GOLDEN
    if not path.is_file():
        pytest.fail(f"{path} not found; set DEEPFILL_GOLDENS to the official_v1 folder")
    case = training_step_case(goldens)
    g, d, origins = training_step_losses(case)
    tf_names = {tf: ("g", case.generator, name) for name, tf in tf_variable_names(case.generator).items()}
    for critic, which in ((case.global_critic, "global"), (case.local_critic, "local")):
        tf_names |= {tf: ("d", critic, name) for name, tf in critic_variable_names(critic, which).items()}
    return {
        "golden": case.golden,
        "bbox": case.bbox[:2],
        "origins": origins,
        "g": g,
        "d": d,
        "tf_names": tf_names,
    }


def _relative(ours: float, theirs: float) -> float:
    return abs(ours - theirs) / max(abs(theirs), 1e-12)


def test_local_patch_is_the_official_bbox(step) -> None:
    assert step["origins"].tolist() == [list(step["bbox"])] * step["origins"].shape[0]


@pytest.mark.parametrize(
    ("key", "part"),
    [
        ("l1_loss", lambda s: s["g"]["l1"]),
        ("ae_loss", lambda s: s["g"]["ae"]),
        ("gp_loss", lambda s: s["d"]["gp"]),
        ("d_loss", lambda s: s["d"].total),
        ("g_loss", lambda s: s["g"].total),
    ],
)
def test_loss_terms_match_the_official_graph(step, key, part) -> None:
    theirs = float(step["golden"][f"loss:{key}"])
    ours = float(part(step).detach())
    assert _relative(ours, theirs) < 1e-4, (key, ours, theirs)


def _to_tf_layout(grad: torch.Tensor, module: torch.nn.Module, name: str) -> np.ndarray:
    """Our gradient in the official variable's layout (HWIO kernels, NHWC-ordered dense rows)."""
    array = grad.detach().numpy()
    if array.ndim == 4:
        return array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if name == "dense.weight":
        channels = module.convs[-1].out_channels
        side = math.isqrt(array.size // channels)
        return array.reshape(channels, side, side).transpose(1, 2, 0).reshape(-1, 1)
    return array


def test_gradients_match_the_official_graph(step) -> None:
    golden, tf_names = step["golden"], step["tf_names"]
    keys = [k for k in golden if k.startswith(("grad_g:", "grad_d:"))]
    assert len(keys) >= 10
    wanted = {"g": [], "d": []}
    for key in keys:
        kind, tf_name = key.split(":", 1)[0][-1], key.split(":", 1)[1].removesuffix(":0")
        side, module, name = tf_names[tf_name]
        assert side == kind, f"{key}: {tf_name} is not a {kind} variable"
        wanted[kind].append((key, module, name))
    losses = {"g": step["g"].total, "d": step["d"].total}
    for kind, entries in wanted.items():
        # The error is measured against the largest gradient of the loss, a scale that cannot
        # vanish: some gradients are zero in exact arithmetic (the global critic's dense bias
        # cancels in mean(fake) - mean(real)) and float32 leaves them at ~1e-8 of either sign, and
        # the local critic's first layer, reached through the gradient penalty's double backward,
        # carries float32 rounding of ~3e-4 of its own largest entry in either implementation.
        scale = max(float(np.abs(golden[key]).max()) for key, _, _ in entries)
        assert scale > 0, f"every {kind} gradient of the golden is zero"
        params = [dict(module.named_parameters())[name] for _, module, name in entries]
        grads = torch.autograd.grad(losses[kind], params, retain_graph=True, allow_unused=True)
        for (key, module, name), grad in zip(entries, grads, strict=True):
            theirs = golden[key]
            ours = np.zeros_like(theirs) if grad is None else _to_tf_layout(grad, module, name)
            assert ours.shape == theirs.shape, key
            error = float(np.abs(ours - theirs).max()) / scale
            assert error < 1e-3, (key, error)
