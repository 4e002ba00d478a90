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

from deepfill.official.convert import (
    critic_variable_names,
    load_official_critics,
    load_official_v1,
    tf_variable_names,
)
from deepfill.training.losses import LossWeights, critic_loss, generator_loss, local_patches

GOLDEN = "train_step_256.npz"
# inpaint.yml, the configuration the golden was produced with.
OFFICIAL = LossWeights(coarse=1.2, l1=1.2, ae=1.2, gan=0.001, global_wgan=1.0, gp=10.0)
GAMMA = 0.9


@pytest.fixture(scope="module")
def step(goldens) -> dict:
    path = goldens / GOLDEN
    if not path.is_file():
        pytest.fail(f"{path} not found; set DEEPFILL_GOLDENS to the official_v1 folder")
    data = np.load(path)
    golden = {k: data[k] for k in data.files}
    image = torch.from_numpy(golden["batch_uint8"]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    n, _, height, width = image.shape
    top, left, box_h, box_w = (int(v) for v in golden["bbox"])
    shrink_h, shrink_w = (int(v) for v in golden["shrink"])
    assert box_h == box_w, "the local critic takes square patches"
    mask = torch.zeros(1, 1, height, width)  # official bbox2mask: one mask for the batch
    mask[..., top + shrink_h : top + box_h - shrink_h, left + shrink_w : left + box_w - shrink_w] = 1
    # Weights stay in the official BGR order: the batch is fed as the official graph was fed.
    generator = load_official_v1(path, bgr_to_rgb=False).train()
    global_critic, local_critic = load_official_critics(
        path, image_size=height, local_size=box_h, bgr_to_rgb=False
    )
    origins = local_patches(mask.expand(n, -1, -1, -1), box_h)
    x1, x2, _ = generator(image, mask)
    g = generator_loss(
        image, mask, x1, x2, origins, box_h, OFFICIAL, "box", GAMMA, critics=(global_critic, local_critic)
    )
    fake = x2 * mask + image * (1 - mask)
    d = critic_loss(
        global_critic,
        local_critic,
        image,
        fake,
        mask,
        origins,
        alpha_global=torch.from_numpy(golden["gp_alpha_global"]).flatten(),
        alpha_local=torch.from_numpy(golden["gp_alpha_local"]).flatten(),
        gp_weight=OFFICIAL.gp,
    )
    tf_names = {tf: ("g", generator, name) for name, tf in tf_variable_names(generator).items()}
    for critic, which in ((global_critic, "global"), (local_critic, "local")):
        tf_names |= {tf: ("d", critic, name) for name, tf in critic_variable_names(critic, which).items()}
    return {
        "golden": golden,
        "bbox": (top, left),
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
        ("l1_loss", lambda s: s["g"].l1),
        ("ae_loss", lambda s: s["g"].ae),
        ("gp_loss", lambda s: s["d"].gp),
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
