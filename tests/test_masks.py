"""Mask generators: shapes, value sets, official sizes, bounds, determinism, files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from deepfill.data import masks as M


def _bbox(mask: torch.Tensor) -> tuple[int, int]:
    rows = torch.nonzero(mask[0].any(dim=1)).flatten()
    cols = torch.nonzero(mask[0].any(dim=0)).flatten()
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


@pytest.mark.parametrize("name", sorted(M.PRESETS))
@pytest.mark.parametrize(("height", "width"), [(256, 256), (512, 384), (96, 160)])
def test_presets_shape_dtype_values(name, height, width) -> None:
    rng = np.random.default_rng(1)
    for _ in range(5):
        mask = M.PRESETS[name](height, width, rng)
        assert mask.shape == (1, height, width)
        assert mask.dtype == torch.float32
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert mask.sum() > 0


def test_official_rectangle_sizes_at_256() -> None:
    rng = np.random.default_rng(0)
    sizes = [_bbox(M.rectangle(256, 256, rng)) for _ in range(300)]
    heights, widths = zip(*sizes, strict=True)
    assert min(heights) >= 96
    assert max(heights) <= 128
    assert min(widths) >= 96
    assert max(widths) <= 128
    # The shrink is random: both extremes of the range show up.
    assert min(heights) <= 100
    assert max(heights) >= 124


def test_centered_rectangle_is_the_official_eval_box() -> None:
    mask = M.centered_rectangle(256, 256)
    assert _bbox(mask) == (128, 128)
    assert mask[0, 64, 64] == 1
    assert mask[0, 63, 63] == 0
    assert mask[0, 191, 191] == 1
    assert mask[0, 192, 192] == 0


def test_lama_presets_drop_masks_over_half_the_image() -> None:
    rng = np.random.default_rng(3)
    for preset in (M.thin, M.medium, M.thick):
        ratios = [M.hole_ratio(preset(256, 256, rng)) for _ in range(40)]
        assert max(ratios) <= 0.5
    thick = np.mean([M.hole_ratio(M.thick(256, 256, rng)) for _ in range(40)])
    thin = np.mean([M.hole_ratio(M.thin(256, 256, rng)) for _ in range(40)])
    assert thick > thin


def test_presets_scale_with_image_size() -> None:
    small = np.mean([M.hole_ratio(M.medium(128, 128, np.random.default_rng(i))) for i in range(30)])
    large = np.mean([M.hole_ratio(M.medium(512, 512, np.random.default_rng(i))) for i in range(30)])
    assert abs(small - large) < 0.08  # the same share of the image, not the same pixel count


def test_free_form_strokes() -> None:
    rng = np.random.default_rng(2)
    ratios = [M.hole_ratio(M.free_form(256, 256, rng)) for _ in range(100)]
    assert min(ratios) > 0
    assert max(ratios) < 0.7
    thin_strokes = M.free_form(256, 256, np.random.default_rng(0), strokes=(1, 1), stroke_width=(2, 3))
    assert M.hole_ratio(thin_strokes) < 0.05


def test_bounded_resamples_into_range_and_never_returns_empty() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        ratio = M.hole_ratio(M.bounded(256, 256, rng, M.free_form, min_ratio=0.1, max_ratio=0.2))
        assert 0.1 <= ratio <= 0.2

    def empty(h, w, r):
        return torch.zeros(1, h, w)

    mask = M.bounded(64, 64, rng, empty, min_ratio=0.2, max_ratio=0.3, max_tries=3)
    assert 0.2 <= M.hole_ratio(mask) <= 0.3
    with pytest.raises(ValueError, match="min_ratio <= max_ratio"):
        M.bounded(64, 64, rng, M.free_form, min_ratio=0.5, max_ratio=0.2)


def test_mixed_weights_and_union() -> None:
    def left(h, w, r):
        m = torch.zeros(1, h, w)
        m[..., : w // 4] = 1
        return m

    def top(h, w, r):
        m = torch.zeros(1, h, w)
        m[:, : h // 4] = 1
        return m

    rng = np.random.default_rng(0)
    assert torch.equal(M.mixed(32, 32, rng, [left, top], weights=[1, 0]), left(32, 32, rng))
    union = M.mixed(32, 32, rng, [left, top], union=True)
    assert torch.equal(union, torch.maximum(left(32, 32, rng), top(32, 32, rng)))
    chosen = [bool(M.mixed(32, 32, rng, [left, top])[0, 0, -1]) for _ in range(60)]
    assert 10 < sum(chosen) < 50
    with pytest.raises(ValueError, match="weights"):
        M.mixed(32, 32, rng, [left, top], weights=[1, -1])


def test_eval_mask_depends_only_on_seed_and_index() -> None:
    a = M.eval_mask(M.thick, seed=7, index=11, height=128, width=128)
    b = M.eval_mask(M.thick, seed=7, index=11, height=128, width=128)
    c = M.eval_mask(M.thick, seed=7, index=12, height=128, width=128)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_folder_masks_resize_binarise_and_augment(tmp_path) -> None:
    array = np.zeros((60, 100), np.uint8)
    array[10:30, 20:50] = 200
    array[40:45, 0:5] = 90  # below the threshold (128): not a hole
    Image.fromarray(array).save(tmp_path / "a.png")
    masks = M.FolderMasks(tmp_path, flip=False, rotate=False)
    mask = masks(30, 50, np.random.default_rng(0))
    assert mask.shape == (1, 30, 50)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert mask[0, 10, 15] == 1
    assert mask[0, 21, 1] == 0
    rotated = M.FolderMasks(tmp_path, flip=True, rotate=True)
    shapes = {tuple(rotated(30, 50, np.random.default_rng(s)).shape) for s in range(8)}
    assert shapes == {(1, 30, 50)}
    draws = {rotated(30, 50, np.random.default_rng(s)).numpy().tobytes() for s in range(8)}
    assert len(draws) > 1


def test_folder_masks_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="mask folder not found"):
        M.FolderMasks(tmp_path / "nope")
    with pytest.raises(ValueError, match="holds no mask images"):
        M.FolderMasks(tmp_path)


def test_make_masks_cli_writes_a_reusable_fixed_set(tmp_path, capsys) -> None:
    from deepfill.cli.make_masks import main

    assert main([str(tmp_path / "a"), "--preset", "medium", "--count", "4", "--size", "64", "96"]) == 0
    assert main([str(tmp_path / "b"), "--preset", "medium", "--count", "4", "--size", "64", "96"]) == 0
    for i in range(4):
        a = np.asarray(Image.open(tmp_path / "a" / f"{i:06d}.png"))
        b = np.asarray(Image.open(tmp_path / "b" / f"{i:06d}.png"))
        assert a.shape == (64, 96)
        assert np.array_equal(a, b)
        assert set(np.unique(a)) <= {0, 255}
        assert np.array_equal(a > 0, M.eval_mask(M.medium, 0, i, 64, 96)[0].numpy() > 0)
    assert "wrote 4 medium masks" in capsys.readouterr().out
    for bad in (["--count", "0"], ["--size", "0", "64"]):
        with pytest.raises(SystemExit) as info:
            main([str(tmp_path / "c"), *bad])
        assert info.value.code == 2
        assert capsys.readouterr().err.startswith("deepfill-make-masks: error:")
    assert not (tmp_path / "c").exists()  # checked before the folder is made


# Each protocol's hole ratio over 200 fixed draws: (lowest allowed, highest allowed, the range
# its mean falls in). LaMa caps its masks at half the image; the v1 box is a quarter; MAT's
# small and large free-form masks are neither empty nor full, large holding about twice the area.
PROTOCOL_AREAS = {
    "thin": (0.0, 0.5, (0.1, 0.3)),
    "medium": (0.0, 0.5, (0.15, 0.35)),
    "thick": (0.0, 0.5, (0.25, 0.42)),
    "small": (0.0, 1.0, (0.15, 0.3)),
    "large": (0.0, 1.0, (0.33, 0.5)),
    "box": (0.25, 0.25, (0.25, 0.25)),
    "strokes": (0.0, 0.5, (0.05, 0.25)),
}


@pytest.mark.parametrize("size", [256, 512])
@pytest.mark.parametrize("name", M.PROTOCOLS)
def test_protocols_draw_the_hole_areas_they_describe(name, size) -> None:
    low, high, (mean_low, mean_high) = PROTOCOL_AREAS[name]
    ratios = np.array([M.hole_ratio(M.eval_mask(M.PRESETS[name], 0, i, size, size)) for i in range(200)])
    assert (ratios > 0).all() and (ratios < 1).all()
    assert low <= ratios.min() and ratios.max() <= high, (ratios.min(), ratios.max())
    assert mean_low <= ratios.mean() <= mean_high, ratios.mean()


def test_small_and_large_follow_mat_at_both_sizes() -> None:
    """MAT's two generators (256^2 and 512^2): large draws more boxes and strokes than small,
    so its holes are larger at every quantile; non-square images work too."""
    for size in (256, 512):
        small = np.array([M.hole_ratio(M.eval_mask(M.small, 1, i, size, size)) for i in range(200)])
        large = np.array([M.hole_ratio(M.eval_mask(M.large, 1, i, size, size)) for i in range(200)])
        assert (np.percentile(large, [25, 50, 75]) > np.percentile(small, [25, 50, 75])).all()
    mask = M.large(200, 320, np.random.default_rng(0))
    assert mask.shape == (1, 200, 320) and 0 < M.hole_ratio(mask) < 1
