"""deepfill-inpaint: any size, RGBA masks, alpha channels, folders, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from deepfill.cli.inpaint import run
from deepfill.models import InpaintGenerator


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "tiny.pt"
    generator = InpaintGenerator(cnum=32)
    torch.save({"state_dict": generator.state_dict()}, path)
    return path


def cfg(weights, **kwargs):
    base = {
        "weights": str(weights),
        "input": None,
        "mask_path": None,
        "output": None,
        "save_coarse": False,
        "save_flow": False,
        "device": "cpu",
    }
    return OmegaConf.create(base | {k: str(v) if isinstance(v, Path) else v for k, v in kwargs.items()})


def test_odd_size_image_with_rgba_mask_keeps_size_and_known_pixels(weights, tmp_path) -> None:
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (333, 517, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    paint = np.zeros((333, 517, 4), np.uint8)  # a painted layer: opaque strokes, transparent elsewhere
    paint[100:180, 200:330] = (255, 0, 0, 255)
    Image.fromarray(paint, "RGBA").save(tmp_path / "mask.png")
    written = run(
        cfg(
            weights,
            input=tmp_path / "photo.png",
            mask_path=tmp_path / "mask.png",
            output=tmp_path / "out",
            save_coarse=True,
            save_flow=True,
        )
    )
    result = np.asarray(Image.open(tmp_path / "out" / "photo.png"))
    assert result.shape == (333, 517, 3)
    hole = paint[..., 3] > 0
    assert np.array_equal(result[~hole], photo[~hole])  # known pixels exactly
    assert not np.array_equal(result[hole], photo[hole])
    assert {p.name for p in written} == {"photo.png", "photo_coarse.png", "photo_flow.png"}


def test_alpha_channel_of_the_input_is_the_hole(weights, tmp_path) -> None:
    rgba = np.full((64, 80, 4), 200, np.uint8)
    rgba[10:30, 20:50, 3] = 0  # transparent = hole
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    run(cfg(weights, input=tmp_path / "cutout.png", output=tmp_path / "out"))
    result = np.asarray(Image.open(tmp_path / "out" / "cutout.png"))
    assert result.shape == (64, 80, 3)
    assert (result[:10] == 200).all()


def test_folders_and_bad_input(weights, tmp_path) -> None:
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    (tmp_path / "masks" / "sub").mkdir(parents=True)
    for name in ("a", "sub/b"):
        Image.fromarray(np.full((48, 40, 3), 90, np.uint8)).save(tmp_path / "imgs" / f"{name}.jpg")
        m = np.zeros((48, 40), np.uint8)
        m[10:20, 10:20] = 255
        Image.fromarray(m).save(tmp_path / "masks" / f"{name}.png")
    written = run(
        cfg(weights, input=tmp_path / "imgs", mask_path=tmp_path / "masks", output=tmp_path / "out")
    )
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == ["a.png", "sub/b.png"]
    with pytest.raises(ValueError, match="would overwrite an input"):
        run(cfg(weights, input=tmp_path / "out", mask_path=tmp_path / "masks", output=tmp_path / "out"))
    Image.fromarray(np.zeros((10, 10), np.uint8) + 255).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match=r"is 10x10 but image .* is 40x48"):
        run(
            cfg(
                weights,
                input=tmp_path / "imgs" / "a.jpg",
                mask_path=tmp_path / "small.png",
                output=tmp_path / "o2",
            )
        )
    with pytest.raises(ValueError, match="no alpha channel"):
        run(cfg(weights, input=tmp_path / "imgs" / "a.jpg", output=tmp_path / "o3"))


def _noise_with_box(seed: int, size: tuple[int, int], box: tuple[slice, slice]) -> tuple[np.ndarray, ...]:
    """A uniform-noise (H,W,3) uint8 image and its (H,W) bool hole, True inside ``box``."""
    image = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    hole = np.zeros(size, dtype=bool)
    hole[box] = True
    return image, hole


def test_inpaint_array_gives_every_picture_at_the_input_size(weights) -> None:
    """The function behind deepfill-inpaint: any size, known pixels exact, the hole filled."""
    from deepfill.inference import inpaint_array, load_generator

    generator = load_generator(weights)
    image, hole = _noise_with_box(0, (37, 53), (slice(10, 25), slice(12, 40)))
    result = inpaint_array(generator, image, hole)
    for picture in (result.completed, result.coarse, result.refined, result.flow):
        assert picture.shape == (37, 53, 3) and picture.dtype == np.uint8
    assert np.array_equal(result.completed[~hole], image[~hole])
    assert np.array_equal(result.coarse[~hole], image[~hole])
    assert not np.array_equal(result.completed[hole], image[hole])
    assert result.device == "cpu" and result.seconds > 0
    with pytest.raises(ValueError, match="hole must be"):
        inpaint_array(generator, image, hole[:10])


def test_bf16_inference_keeps_the_known_pixels_and_stays_close_to_fp32(weights) -> None:
    """precision=bf16 (autocast): the known pixels exact, the hole within bf16 rounding of fp32."""
    from deepfill.inference import inpaint_array, load_generator

    generator = load_generator(weights)
    image, hole = _noise_with_box(1, (64, 72), (slice(16, 48), slice(20, 52)))
    fp32 = inpaint_array(generator, image, hole, "fp32")
    bf16 = inpaint_array(generator, image, hole, "bf16")
    assert np.array_equal(bf16.completed[~hole], image[~hole])
    difference = np.abs(bf16.completed.astype(int) - fp32.completed.astype(int))[hole]
    assert difference.mean() < 3.0  # grey levels of 255
    assert not np.array_equal(bf16.completed, fp32.completed)  # it did run in bf16
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        inpaint_array(generator, image, hole, "fp16")
