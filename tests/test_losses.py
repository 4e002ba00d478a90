"""Losses against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from deepfill.losses import (
    LossWeights,
    ae_loss,
    crop_around_holes,
    discount_weights,
    discounted_l1,
    gradient_penalty,
    hole_boxes,
    wgan_critic_loss,
    wgan_generator_loss,
)

G = 0.5  # a gamma whose powers are easy to write down


def test_box_discount_of_a_small_box_matches_the_official_formula() -> None:
    mask = torch.zeros(1, 1, 6, 7)
    mask[..., 1:5, 2:5] = 1  # a 4 x 3 box
    w = discount_weights(mask, G, "box")[0, 0]
    # Official: max(g**min(i, h-i), g**min(j, w-j)) with h=4, w=3 (note: h-i, not h-1-i).
    # row distances min(i,4-i) = 0,1,2,1; column distances min(j,3-j) = 0,1,1.
    expected_box = torch.tensor(
        [
            [1.0, 1.0, 1.0],
            [1.0, 0.5, 0.5],
            [1.0, 0.5, 0.5],
            [1.0, 0.5, 0.5],
        ]
    )
    expected = torch.zeros(6, 7)
    expected[1:5, 2:5] = expected_box
    assert torch.equal(w, expected)


def test_nearest_known_discount_of_an_l_shaped_hole() -> None:
    mask = torch.zeros(1, 1, 9, 9)
    mask[..., 1:8, 1:4] = 1  # vertical bar, 3 wide
    mask[..., 5:8, 1:8] = 1  # horizontal bar, 3 high
    w = discount_weights(mask, G, "nearest_known")[0, 0]
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
    w = discount_weights(mask, G, "nearest_known")[0, 0]
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


def test_hole_boxes_and_crops_follow_each_sample() -> None:
    mask = torch.zeros(3, 1, 16, 16)
    mask[0, :, 2:4, 3:9] = 1
    mask[1, :, 12:16, 12:16] = 1  # bottom-right corner: the crop is clamped
    boxes = hole_boxes(mask)
    assert boxes[0].tolist() == [2, 3, 4, 9]
    assert boxes[1].tolist() == [12, 12, 16, 16]
    assert boxes[2].tolist() == [0, 0, 0, 0]  # empty mask
    image = torch.arange(3 * 2 * 16 * 16, dtype=torch.float32).view(3, 2, 16, 16)
    mask_crop, image_crop = crop_around_holes(mask, 8, image)
    assert torch.equal(image_crop[0], image[0, :, 0:8, 2:10])  # centre (3, 6) -> top 0 (clamped), left 2
    assert torch.equal(image_crop[1], image[1, :, 8:16, 8:16])
    assert torch.equal(image_crop[2], image[2, :, 4:12, 4:12])  # empty: image centre
    assert mask_crop[1].sum() == 16
    with pytest.raises(ValueError, match="exceeds the image size"):
        crop_around_holes(mask, 32, image)


def test_loss_weights_reject_negatives() -> None:
    assert LossWeights().gp == 10.0
    with pytest.raises(ValueError, match=r"loss\.gan must be >= 0"):
        LossWeights(gan=-1.0)
