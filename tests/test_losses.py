"""Losses against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deepfill.data import masks as M
from deepfill.models import GlobalCritic, LocalCritic
from deepfill.training.losses import (
    GENERATOR_TERMS,
    LossConfig,
    LossWeights,
    StepOutputs,
    ae_loss,
    ae_term,
    box_discount,
    critic_loss,
    crop_patches,
    discounted_l1,
    generator_loss,
    gradient_penalty,
    hole_boxes,
    l1_term,
    l2_term,
    local_patches,
    nearest_known_discount,
    wgan_critic_loss,
    wgan_generator_loss,
)

G = 0.5  # a gamma whose powers are easy to write down


def test_box_discount_of_a_small_patch_matches_the_official_formula() -> None:
    w = box_discount(4, 3, G)[0, 0]
    # Official: max(g**min(i, h-i), g**min(j, w-j)) with h=4, w=3 (note: h-i, not h-1-i).
    # row distances min(i,4-i) = 0,1,2,1; column distances min(j,3-j) = 0,1,1.
    expected = torch.tensor(
        [
            [1.0, 1.0, 1.0],
            [1.0, 0.5, 0.5],
            [1.0, 0.5, 0.5],
            [1.0, 0.5, 0.5],
        ]
    )
    assert torch.equal(w, expected)


def _official_discount_mask(height: int, width: int, gamma: float) -> torch.Tensor:
    """inpaint_ops.spatial_discounting_mask, written out as the official loops do."""
    values = torch.ones(height, width, dtype=torch.float64)
    for i in range(height):
        for j in range(width):
            values[i, j] = max(gamma ** min(i, height - i), gamma ** min(j, width - j))
    return values


@pytest.mark.parametrize("shrink", [0, 8, 16])
def test_box_l1_weighs_the_official_patch_with_the_official_mask(shrink) -> None:
    """The weight each pixel gets in the L1 term (read off its gradient) is the official mask
    over the 128x128 bbox the hole was carved from, known margin included; 0 elsewhere; and the
    loss is the plain mean over patch x channels."""
    top, left, size = 40, 88, 128
    mask = torch.zeros(2, 1, 256, 256)
    mask[..., top + shrink : top + size - shrink, left + shrink : left + size - shrink] = 1
    origins = local_patches(mask, size)
    assert origins.tolist() == [[top, left]] * 2
    image = torch.zeros(2, 3, 256, 256)
    x1 = torch.full_like(image, 0.5).requires_grad_(True)  # |error| = 0.5 everywhere
    config = LossConfig(LossWeights(coarse=1.0), "box", 0.9, size)
    l1 = l1_term(StepOutputs.of(image, mask, x1, None, size), config)
    (grad,) = torch.autograd.grad(l1, x1)
    weight = grad[0, 0].double() * (2 * 3 * size * size)
    expected = torch.zeros(256, 256, dtype=torch.float64)
    expected[top : top + size, left : left + size] = _official_discount_mask(size, size, 0.9)
    assert torch.allclose(weight, expected, atol=1e-6)
    assert l1.item() == pytest.approx(0.5 * float(expected.sum()) / (size * size), rel=1e-5)
    # The hole's edge weighs gamma**shrink (0.185 at 16 px), not 1.
    assert weight[top + shrink + size // 2, left + shrink].item() == pytest.approx(0.9**shrink, rel=1e-5)


def test_local_patch_of_every_official_box_mask_is_the_box_it_was_carved_from() -> None:
    """rectangle() shrinks opposite sides by the same amount, so the patch centred on the hole
    is the unshrunk box: the step needs no extra batch key to find the official local patch."""
    for seed in range(200):
        mask = M.rectangle(256, 256, np.random.default_rng(seed))[None]
        # rectangle() draws the box's top and left first (official random_bbox), then shrinks.
        replay = np.random.default_rng(seed)
        top, left = int(replay.integers(0, 128)), int(replay.integers(0, 128))
        assert local_patches(mask, 128)[0].tolist() == [top, left], seed


def test_nearest_known_discount_of_an_l_shaped_hole() -> None:
    mask = torch.zeros(1, 1, 9, 9)
    mask[..., 1:8, 1:4] = 1  # vertical bar, 3 wide
    mask[..., 5:8, 1:8] = 1  # horizontal bar, 3 high
    w = nearest_known_discount(mask, G)[0, 0]
    # Chessboard distance to the nearest known pixel: 1 on the rim, 2 on the bars' centre lines.
    d = torch.zeros(9, 9, dtype=torch.long)
    d[1:8, 1:4] = 1
    d[5:8, 1:8] = 1
    d[2:7, 2] = 2  # centre column of the vertical bar
    d[6, 2:7] = 2  # centre row of the horizontal bar
    expected = torch.where(d > 0, G ** d.float(), torch.zeros(9, 9))
    assert torch.equal(w, expected)


def test_hole_touching_the_border_does_not_treat_the_border_as_known() -> None:
    mask = torch.zeros(1, 1, 5, 5)
    mask[..., :, :3] = 1  # columns 0-2, touching top, bottom and left borders
    w = nearest_known_discount(mask, G)[0, 0]
    # Only column 3 is known: distance 1, 2, 3 for columns 2, 1, 0.
    assert w[:, 2].tolist() == [G] * 5
    assert w[:, 1].tolist() == [G**2] * 5
    assert w[:, 0].tolist() == [G**3] * 5


def test_discounted_l1_normalises_by_the_support() -> None:
    target = torch.zeros(1, 3, 4, 4)
    prediction = torch.ones(1, 3, 4, 4)
    weights = torch.zeros(1, 1, 4, 4)
    weights[..., :2, :2] = torch.tensor([[1.0, 0.5], [0.5, 0.25]])
    # sum(|1| * w) over 3 channels / (4 support pixels * 3 channels) = 2.25 / 4
    assert discounted_l1(target, prediction, weights).item() == pytest.approx(2.25 / 4)


def test_ae_loss_hand_case() -> None:
    target = torch.zeros(1, 1, 2, 2)
    x1 = torch.full((1, 1, 2, 2), 2.0)
    x2 = torch.full((1, 1, 2, 2), 1.0)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])  # 3 known pixels of 4
    # (1.2 * mean(2 * known) + mean(1 * known)) / mean(known) = (1.2*1.5 + 0.75) / 0.75
    assert ae_loss(target, x1, x2, mask, 1.2).item() == pytest.approx((1.2 * 1.5 + 0.75) / 0.75)


def test_wgan_losses() -> None:
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-1.0, 0.0])
    assert wgan_critic_loss(real, fake).item() == pytest.approx(-0.5 - 2.0)
    assert wgan_generator_loss(fake).item() == pytest.approx(0.5)


class LinearCritic(torch.nn.Module):
    """D(x) = sum(c * x): its input gradient is c everywhere."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x):
        return (self.c * x).sum(dim=(1, 2, 3))


def test_masked_gradient_penalty_of_a_linear_critic() -> None:
    real, fake = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, :, :2, :3] = 1  # 6 pixels
    mask[1, :, :4, :4] = 1  # 16 pixels
    c = 0.1
    # slope_i = sqrt(sum(c^2 * mask_i) over 3 channels) = c * sqrt(3 * pixels_i)
    slopes = [c * math.sqrt(3 * 6), c * math.sqrt(3 * 16)]
    expected = sum((s - 1) ** 2 for s in slopes) / 2
    assert gradient_penalty(LinearCritic(c), real, fake, mask).item() == pytest.approx(expected, rel=1e-5)
    unmasked = (c * math.sqrt(3 * 64) - 1) ** 2
    assert gradient_penalty(LinearCritic(c), real, fake).item() == pytest.approx(unmasked, rel=1e-5)


def test_gradient_penalty_trains_the_critic() -> None:
    critic = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 1))
    penalty = gradient_penalty(critic, torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4))
    penalty.backward()
    assert critic[1].weight.grad is not None
    assert critic[1].weight.grad.abs().sum() > 0


def _autograd_input_gradient(critic, x):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return grad


@pytest.mark.parametrize("padding", ["tf_same", "symmetric"])
@pytest.mark.parametrize(("kind", "size"), [("global", 64), ("local", 32), ("global", 40)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_critic_input_gradient_equals_autograds_double_backward(kind, size, padding, channels_last) -> None:
    """The explicit input gradient of the critics (the penalty's fast path) has the values of
    autograd's, and any loss of it gives the weights the gradient the double backward gives."""
    torch.manual_seed(0)
    make = GlobalCritic if kind == "global" else LocalCritic
    critic = make(size, cnum=8, padding=padding, channels_last=channels_last)
    x = torch.randn(3, 3, size, size)
    weights = torch.rand(3, 1, size, size)
    expected = _autograd_input_gradient(critic, x)
    got = critic.input_gradient(x)
    assert got.shape == x.shape and got.dtype == x.dtype
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    grads = []
    for grad in (expected, got):
        critic.zero_grad(set_to_none=True)
        ((grad.square() * weights).sum().sqrt() - 1).square().backward()
        grads.append([torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in critic.parameters()])
    assert any(g.abs().sum() > 0 for g in grads[0])
    for reference, ours in zip(*grads, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-8)


def test_gradient_penalty_of_the_critics_equals_the_autograd_penalty() -> None:
    torch.manual_seed(0)
    critic = GlobalCritic(32, cnum=8)
    real, fake = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    mask = (torch.rand(4, 1, 32, 32) > 0.5).float()
    alpha = torch.rand(4)

    class Wrapped(torch.nn.Module):  # not a Critic: takes the autograd path
        def __init__(self) -> None:
            super().__init__()
            self.critic = critic

        def forward(self, x):
            return self.critic(x)

    fast = gradient_penalty(critic, real, fake, mask, alpha)
    reference = gradient_penalty(Wrapped(), real, fake, mask, alpha)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-7)


def test_hole_boxes_and_crops_follow_each_sample() -> None:
    mask = torch.zeros(3, 1, 16, 16)
    mask[0, :, 2:4, 3:9] = 1
    mask[1, :, 12:16, 12:16] = 1  # bottom-right corner: the crop is clamped
    boxes = hole_boxes(mask)
    assert boxes[0].tolist() == [2, 3, 4, 9]
    assert boxes[1].tolist() == [12, 12, 16, 16]
    assert boxes[2].tolist() == [0, 0, 0, 0]  # empty mask
    origins = local_patches(mask, 8)
    # centre (3, 6) -> top 0 (clamped), left 2; corner -> 8, 8; empty -> image centre
    assert origins.tolist() == [[0, 2], [8, 8], [4, 4]]
    image = torch.arange(3 * 2 * 16 * 16, dtype=torch.float32).view(3, 2, 16, 16)
    mask_crop, image_crop = crop_patches(origins, 8, mask, image)
    assert torch.equal(image_crop[0], image[0, :, 0:8, 2:10])
    assert torch.equal(image_crop[1], image[1, :, 8:16, 8:16])
    assert torch.equal(image_crop[2], image[2, :, 4:12, 4:12])
    assert mask_crop[1].sum() == 16
    (shared,) = crop_patches(origins, 8, image[:1])  # a (1,C,H,W) tensor is cropped per sample
    assert torch.equal(shared[1], image[0, :, 8:16, 8:16])
    with pytest.raises(ValueError, match="exceeds the image size"):
        local_patches(mask, 32)


def test_loss_weights_reject_negatives() -> None:
    assert LossWeights().gp == 10.0
    with pytest.raises(ValueError, match=r"loss\.gan must be >= 0"):
        LossWeights(gan=-1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"discount": "gaussian"},
            r"model\.discount must be 'box', 'nearest_known' or 'none', got 'gaussian'",
        ),
        ({"gamma": 0.0}, r"model\.gamma must be in \(0, 1\], got 0\.0"),
        ({"gamma": 1.5}, r"model\.gamma must be in \(0, 1\], got 1\.5"),
        ({"patch_size": 0}, r"local patch size must be >= 1, got 0"),
    ],
)
def test_loss_config_rejects_what_the_losses_cannot_use(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        LossConfig(**kwargs)


class ConstantCritic(torch.nn.Module):
    """Scores every input ``value + 0 * sum(x)``, and records what it was shown."""

    def __init__(self, value: float, input_size: int) -> None:
        super().__init__()
        self.value, self.input_size, self.seen = value, input_size, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.value + 0 * x.sum(dim=(1, 2, 3))


def _step_inputs(n: int = 2, size: int = 16):
    torch.manual_seed(1)
    image = torch.rand(n, 3, size, size) * 2 - 1
    mask = torch.zeros(n, 1, size, size)
    mask[0, :, 2:7, 3:9] = 1
    mask[1, :, 8:14, 6:12] = 1
    x1, x2 = torch.rand_like(image) * 2 - 1, torch.rand_like(image) * 2 - 1
    return image, mask, x1, x2, local_patches(mask, size // 2)


def test_step_outputs_hold_the_patches_and_the_composite() -> None:
    image, mask, x1, x2, origins = _step_inputs()
    step = StepOutputs.of(image, mask, x1, x2, 8)
    assert torch.equal(step.origins, origins)
    assert torch.equal(step.completed, x2 * mask + image * (1 - mask))
    shared = StepOutputs.of(image, mask[:1], x1, x2, 8)  # one mask for the whole batch
    assert torch.equal(shared.origins, local_patches(mask[:1].expand(2, -1, -1, -1), 8))
    assert StepOutputs.of(image, mask, x1, None, 8).completed is None


@pytest.mark.parametrize("discount", ["box", "nearest_known"])
def test_generator_loss_is_the_official_weighted_sum(discount) -> None:
    image, mask, x1, x2, origins = _step_inputs()
    weights = LossWeights(coarse=1.7, l1=0.6, ae=2.5, gan=0.3, global_wgan=4.0)
    config = LossConfig(weights, discount, 0.8, patch_size=8)
    critics = (ConstantCritic(-2.0, 16), ConstantCritic(-5.0, 8))
    step = StepOutputs.of(image, mask, x1, x2, 8)
    loss = generator_loss(step, config, critics)
    l1, ae = l1_term(step, config), ae_loss(image, x1, x2, mask, 1.7)
    # g = -mean(D(fake)): 2 for the global critic, 5 for the local one.
    assert loss["g_adv"].item() == pytest.approx(4.0 * 2.0 + 5.0)
    assert loss["l1"].item() == pytest.approx(l1.item()) and loss["ae"].item() == pytest.approx(ae.item())
    assert loss.total.item() == pytest.approx(0.3 * 13.0 + 0.6 * l1.item() + 2.5 * ae.item(), rel=1e-6)
    # Logged as train/<name>, the total under its own name, every value detached.
    logged = loss.logged("train/")
    assert set(logged) == {"train/g_loss", "train/l1", "train/ae", "train/g_adv"}
    assert logged["train/g_loss"] is not loss.total and not logged["train/g_loss"].requires_grad
    # The critics saw the completed image and its local patch, nothing else.
    completed = x2 * mask + image * (1 - mask)
    assert torch.equal(critics[0].seen[0], completed)
    assert torch.equal(critics[1].seen[0], crop_patches(origins, 8, completed)[0])
    # Without critics (coarse pre-training, reconstruction-only phases) the term is 0.
    coarse = StepOutputs.of(image, mask, x1, None, 8)
    plain = generator_loss(coarse, config)
    l1_coarse, ae_coarse = l1_term(coarse, config), ae_term(coarse, config)
    assert plain["g_adv"].item() == 0.0
    assert plain.total.item() == pytest.approx(0.6 * l1_coarse.item() + 2.5 * ae_coarse.item(), rel=1e-6)


def test_a_registered_term_joins_the_total_with_its_weight(monkeypatch) -> None:
    """A new term is one function and one weight: the total and the logged names follow."""
    from deepfill.training import losses

    image, mask, x1, x2, _ = _step_inputs()
    config = LossConfig(LossWeights(l1=0.6, ae=2.5, global_wgan=3.0), patch_size=8)
    step = StepOutputs.of(image, mask, x1, x2, 8)
    before = generator_loss(step, config)
    extra = losses.LossTerm(lambda s, config, critics: (s.x2 - s.image).square().mean(), "global_wgan")
    monkeypatch.setitem(losses.GENERATOR_TERMS, "l2_whole", extra)
    after = generator_loss(step, config)
    l2 = (x2 - image).square().mean().item()
    assert after["l2_whole"].item() == pytest.approx(l2)
    assert after.total.item() == pytest.approx(before.total.item() + 3.0 * l2, rel=1e-6)
    assert "train/l2_whole" in after.logged("train/")
    assert set(GENERATOR_TERMS) >= {"l1", "ae", "g_adv"}


def test_l2_is_the_hole_term_with_squared_errors_and_off_by_default() -> None:
    """With gamma 1 (no discount) the L2 term is the mean squared error over the hole's pixels and
    channels, coarse-weighted like L1; at weight 0 (both papers) it is neither computed nor logged."""
    image, mask, x1, x2, _ = _step_inputs()
    config = LossConfig(LossWeights(coarse=1.5, l2=2.0), "nearest_known", 1.0, patch_size=8)
    step = StepOutputs.of(image, mask, x1, x2, 8)

    def hole_mse(x: torch.Tensor) -> float:
        # per sample over its hole (pixels x channels), then over the batch
        per = [((image[i] - x[i]) ** 2)[:, mask[i, 0] > 0].mean() for i in range(image.shape[0])]
        return torch.stack(per).mean().item()

    expected = 1.5 * hole_mse(x1) + hole_mse(x2)
    assert l2_term(step, config).item() == pytest.approx(expected, rel=1e-6)
    loss = generator_loss(step, config)
    assert loss["l2"].item() == pytest.approx(expected, rel=1e-6)
    without = generator_loss(step, LossConfig(LossWeights(coarse=1.5), "nearest_known", 1.0, 8))
    assert loss.total.item() == pytest.approx(without.total.item() + 2.0 * expected, rel=1e-6)
    assert "train/l2" in loss.logged() and "train/l2" not in without.logged()
    # Both hole terms read one set of discount weights per step (no hole distance given: the
    # erosion that makes them runs once).
    from deepfill.training import losses

    calls = []
    original = losses.nearest_known_discount
    fresh = StepOutputs.of(image, mask, x1, x2, 8)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(losses, "nearest_known_discount", lambda *a: calls.append(1) or original(*a))
        again = generator_loss(fresh, config)
    assert len(calls) == 1 and again.total.item() == pytest.approx(loss.total.item(), rel=1e-6)
    # A pixel off by 0.5 costs 0.25 in L2 against 0.5 in L1: the errors are squared, not absolute.
    flat = StepOutputs.of(image, mask, image + 0.5 * mask, None, 8)
    unit = LossConfig(LossWeights(coarse=1.0, l2=1.0), "none", 1.0, patch_size=8)
    assert l2_term(flat, unit).item() == pytest.approx(0.25 * mask.mean().item(), rel=1e-6)
    assert l1_term(flat, unit).item() == pytest.approx(0.5 * mask.mean().item(), rel=1e-6)


def test_reconstruction_l1_weighs_the_coarse_stage() -> None:
    image, mask, x1, x2, _ = _step_inputs()
    for discount in ("box", "nearest_known"):
        unit = LossConfig(LossWeights(coarse=1.0), discount, patch_size=8)
        coarse_only = l1_term(StepOutputs.of(image, mask, x1, None, 8), unit)
        refined_only = l1_term(StepOutputs.of(image, mask, x2, None, 8), unit)
        weighted = LossConfig(LossWeights(coarse=1.2), discount, patch_size=8)
        both = l1_term(StepOutputs.of(image, mask, x1, x2, 8), weighted)
        assert both.item() == pytest.approx(1.2 * coarse_only.item() + refined_only.item(), rel=1e-6)


def test_critic_loss_has_no_global_weight_and_lambda_on_both_penalties() -> None:
    image, mask, x1, x2, origins = _step_inputs()
    fake = x2 * mask + image * (1 - mask)
    alpha_g, alpha_l = torch.tensor([0.2, 0.7]), torch.tensor([0.9, 0.1])
    critics = (LinearCritic(0.3), LinearCritic(0.05))
    critics[0].input_size, critics[1].input_size = 16, 8
    step = StepOutputs.of(image, mask, x1, x2, 8)
    loss = critic_loss(*critics, step, LossConfig(LossWeights(gp=7.0), patch_size=8), alpha_g, alpha_l)
    mask_l, real_l, fake_l = crop_patches(origins, 8, mask, image, fake)
    wgan_g = wgan_critic_loss(critics[0](image), critics[0](fake))
    wgan_l = wgan_critic_loss(critics[1](real_l), critics[1](fake_l))
    # Per-sample masks: the global penalty uses each sample's own mask, the local one its crop.
    gp_g = gradient_penalty(critics[0], image, fake, mask, alpha_g)
    gp_l = gradient_penalty(critics[1], real_l, fake_l, mask_l, alpha_l)
    assert loss["d_global"].item() == pytest.approx(wgan_g.item())
    assert loss["d_local"].item() == pytest.approx(wgan_l.item())
    assert loss["critic_gap_global"].item() == pytest.approx(-wgan_g.item())
    assert loss["gp"].item() == pytest.approx(7.0 * (gp_g + gp_l).item(), rel=1e-6)
    assert loss.total.item() == pytest.approx((wgan_g + wgan_l + 7.0 * (gp_g + gp_l)).item(), rel=1e-6)
    # A linear critic's slope is c * sqrt(3 * hole pixels) of each sample: per-sample masks.
    holes = mask.sum(dim=(1, 2, 3))
    expected_gp_g = ((0.3 * (3 * holes).sqrt() - 1) ** 2).mean()
    assert gp_g.item() == pytest.approx(expected_gp_g.item(), rel=1e-5)


def test_precomputed_hole_distance_gives_the_same_nearest_known_discount() -> None:
    """The data module's distance transform (scipy, once per mask in the workers) and the
    erosion loop agree on every kind of hole, border-touching and all-hole ones included."""
    rng = np.random.default_rng(0)
    masks = [M.free_form(96, 80, rng) for _ in range(6)] + [M.thick(96, 80, rng) for _ in range(6)]
    border = torch.zeros(1, 96, 80)
    border[:, :40, :30] = 1  # touches two borders: they are not known pixels
    masks += [border, torch.ones(1, 96, 80), torch.zeros(1, 96, 80)]
    mask = torch.stack(masks)
    distance = torch.stack([M.hole_distance(m) for m in masks])
    assert distance.shape == mask.shape
    # The corner pixel is 30 columns from the known pixel (0, 30); the border does not count.
    assert distance[-3, 0, 0, 0] == 30
    expected = nearest_known_discount(mask, 0.9)
    torch.testing.assert_close(nearest_known_discount(mask, 0.9, distance), expected, rtol=1e-6, atol=1e-7)


def test_the_discount_first_made_in_inference_mode_serves_a_later_backward() -> None:
    """Validation (inference mode) may ask for the cached discount first; training then
    multiplies it into a loss that is differentiated."""
    from deepfill.training import losses

    losses._box_discount_on.cache_clear()
    losses._box_discount_cpu.cache_clear()
    with torch.inference_mode():
        losses.box_discount(24, 24, 0.9)
    prediction = torch.zeros(1, 3, 24, 24, requires_grad=True)
    loss = losses.discounted_l1(torch.ones(1, 3, 24, 24), prediction, losses.box_discount(24, 24, 0.9))
    loss.backward()
    assert prediction.grad is not None and torch.isfinite(prediction.grad).all()
