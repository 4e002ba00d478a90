"""Image loading, sources and the data module."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from deepfill.data import masks as M
from deepfill.data.datamodule import EpochSampler, InpaintDataModule, InpaintDataset
from deepfill.data.datasets import (
    SAMPLE_SPLITS,
    SampleImages,
    TextureImages,
    flist,
    image_folder,
    load_image,
)
from deepfill.utils.errors import UserError


@pytest.fixture
def messy_folder(tmp_path):
    """Six readable images in six awkward formats, and three corrupt files."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    gradient = np.linspace(0, 255, 80 * 120, dtype=np.float64).reshape(80, 120)
    Image.fromarray(gradient.astype(np.uint8), "L").save(root / "gray.png")
    rgba = np.zeros((90, 100, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128
    Image.fromarray(rgba, "RGBA").save(root / "alpha.png")
    Image.fromarray((gradient * 257).astype(np.uint16)).save(root / "sub" / "deep16.png")
    Image.new("CMYK", (70, 50), (0, 255, 255, 0)).save(root / "cmyk.jpg")  # red in CMYK
    Image.new("P", (64, 64), 3).save(root / "palette.png")
    # EXIF orientation 6: stored 40 high x 80 wide, shown rotated 90 degrees clockwise.
    stored = np.zeros((40, 80, 3), np.uint8)
    stored[:, :10] = 255  # a white band on the stored left edge ends up at the top
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(root / "sub" / "rotated.jpg", exif=exif.tobytes())
    # Corrupt: zero bytes, text named .png, truncated JPEG.
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.png").write_text("this is not an image\n")
    full = root / "tmp.jpg"
    Image.fromarray(np.full((300, 300, 3), 90, np.uint8)).save(full, quality=95)
    (root / "truncated.jpg").write_bytes(full.read_bytes()[:2000])
    full.unlink()
    return root


def test_any_format_becomes_rgb(messy_folder) -> None:
    gray = load_image(messy_folder / "gray.png")
    assert gray.shape == (80, 120, 3)
    assert (gray[..., 0] == gray[..., 2]).all()
    assert load_image(messy_folder / "alpha.png")[0, 0].tolist() == [200, 0, 0]
    deep = load_image(messy_folder / "sub" / "deep16.png")
    assert deep.shape == (80, 120, 3)
    assert deep.max() == 255
    assert deep.min() == 0
    red = load_image(messy_folder / "cmyk.jpg")[25, 35]
    assert red[0] > 200
    assert red[1] < 60
    assert red[2] < 60
    assert load_image(messy_folder / "palette.png").shape == (64, 64, 3)
    rotated = load_image(messy_folder / "sub" / "rotated.jpg")
    assert rotated.shape == (80, 40, 3)
    assert rotated[:5].mean() > 200
    assert rotated[-20:].mean() < 40


def test_folder_skips_and_counts_unreadable_files(messy_folder) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = image_folder(messy_folder, image_size=64, max_bad_fraction=0.5)
        # Header scan drops the empty file and the text file; the truncated JPEG is found
        # when decoded and replaced by the next readable image.
        assert len(source) == 7
        images = [source[i] for i in range(len(source))]
    assert all(img.shape == (3, 64, 64) for img in images)
    assert all(img.min() >= -1 and img.max() <= 1 for img in images)
    assert sorted(p.rsplit("/", 1)[-1] for p in source.bad) == ["empty.jpg", "notes.png", "truncated.jpg"]
    # One warning for what the header scan dropped, one per file found bad when decoded.
    skipped = [str(w.message) for w in caught if "unreadable" in str(w.message)]
    assert len(skipped) == 2
    assert "skipping 2 unreadable file(s)" in skipped[0]
    assert "empty.jpg (empty file)" in skipped[0] and "notes.png" in skipped[0]
    assert "skipping unreadable image" in skipped[1] and "truncated.jpg" in skipped[1]


@pytest.mark.filterwarnings("ignore:skipping unreadable image")
def test_too_many_unreadable_files_stop_the_run(messy_folder) -> None:
    with pytest.raises(UserError, match=r"unreadable, more than max_bad_fraction=0.1.*(empty|notes)"):
        image_folder(messy_folder, image_size=64, max_bad_fraction=0.1)


def test_empty_and_missing_folders_give_clear_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match=rf"image folder {re.escape(str(tmp_path))} holds no images"):
        image_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"image folder not found: .*nowhere"):
        image_folder(tmp_path / "nowhere")


def test_small_images_are_upscaled_or_skipped(tmp_path) -> None:
    Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / "small.png")
    Image.new("RGB", (100, 90), (10, 20, 30)).save(tmp_path / "big.png")
    assert image_folder(tmp_path, image_size=64)[1].shape == (3, 64, 64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = image_folder(tmp_path, image_size=64, small="skip", max_bad_fraction=0.5)
        assert source[1].shape == (3, 64, 64)  # small.png is skipped, big.png served instead
    assert any("smaller than 64px" in str(w.message) for w in caught)


def test_training_crops_are_random_at_native_scale_or_the_whole_image_resized(tmp_path) -> None:
    # Left half red, right half blue, 256x128: a random 64px crop is one colour (or the edge),
    # the official RANDOM_CROP: False resize keeps both halves.
    array = np.zeros((128, 256, 3), np.uint8)
    array[:, :128, 0] = 255
    array[:, 128:, 2] = 255
    Image.fromarray(array).save(tmp_path / "halves.png")
    resized = image_folder(tmp_path, image_size=64, crop="resize")
    cropped = image_folder(tmp_path, image_size=64)
    for seed in range(6):
        whole = resized.get(0, np.random.default_rng(seed))
        assert whole.shape == (3, 64, 64)
        red_share = (whole[0] > 0).float().mean().item()
        assert 0.45 < red_share < 0.55  # both halves, squashed to the square
        part = cropped.get(0, np.random.default_rng(seed))
        assert part.shape == (3, 64, 64)
    with pytest.raises(ValueError, match="crop must be 'random' or 'resize'"):
        image_folder(tmp_path, image_size=64, crop="centre")


def test_flist_resolves_relative_paths_against_its_folder(tmp_path) -> None:
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (i * 80, 0, 0)).save(tmp_path / "imgs" / f"{i}.png")
    other = tmp_path / "elsewhere.png"
    Image.new("RGB", (32, 32), (0, 0, 255)).save(other)
    listing = tmp_path / "lists" / "train.flist"
    listing.parent.mkdir()
    listing.write_text(f"# comment\n../imgs/0.png\n\n../imgs/2.png\n{other}\n")
    source = flist(listing, image_size=32)
    assert len(source) == 3
    assert source[1][0, 0, 0].item() == pytest.approx(160 / 127.5 - 1)
    assert source[2][2, 0, 0].item() == pytest.approx(1.0)
    with pytest.raises(FileNotFoundError, match="flist not found"):
        flist(tmp_path / "missing.flist")


def test_sample_images_split_by_photo_and_eval_is_deterministic() -> None:
    assert not set(SAMPLE_SPLITS["train"]) & set(SAMPLE_SPLITS["val"])
    val = SampleImages("val", image_size=128)
    assert torch.equal(val[3], SampleImages("val", image_size=128)[3])
    train = SampleImages("train", image_size=128)
    a = train.get(0, np.random.default_rng(0))
    b = train.get(0, np.random.default_rng(1))
    assert a.shape == (3, 128, 128)
    assert not torch.equal(a, b)


def test_sample_photos_are_every_photo_scikit_image_ships_as_rgb() -> None:
    source = SampleImages("train", image_size=64)
    assert len(source.photos) == len(SAMPLE_SPLITS["train"]) >= 15
    for name, photo in zip(source.names, source.photos, strict=True):
        assert photo.ndim == 3 and photo.shape[2] == 3 and photo.dtype == np.uint8, name


def test_sample_training_items_mix_in_textures_and_jitter_colours() -> None:
    procedural = SampleImages("train", image_size=64, procedural=1.0)
    # A procedural item is a texture item of the source's texture generator, drawn from rng.
    rng, replay = np.random.default_rng(5), np.random.default_rng(5)
    replay.random()
    expected = procedural.textures.get(int(replay.integers(len(procedural.textures))), replay)
    assert torch.equal(procedural.get(0, rng), expected)
    plain = SampleImages("train", image_size=64)
    jittered = SampleImages("train", image_size=64, color_jitter=True)
    means_plain, means_jittered = [], []
    for seed in range(24):
        a = plain.get(seed, np.random.default_rng(seed))
        b = jittered.get(seed, np.random.default_rng(seed))
        assert b.min() >= -1 and b.max() <= 1 and b.shape == a.shape
        means_plain.append(a.mean(dim=(1, 2)))
        means_jittered.append(b.mean(dim=(1, 2)))
    # The same crops, recoloured: colour statistics differ, the spread of the mean colour grows.
    assert not torch.equal(torch.stack(means_plain), torch.stack(means_jittered))
    with pytest.raises(ValueError, match=r"procedural must be a share in \[0, 1\]"):
        SampleImages("train", image_size=64, procedural=1.5)


def test_textures_are_periodic() -> None:
    textures = TextureImages(image_size=128, period=(24, 40))
    for index in range(3):
        ph, pw = textures.period_of(index)
        image = textures.get(index, np.random.default_rng(index))
        assert torch.equal(image[:, ph:, :], image[:, :-ph, :])
        assert torch.equal(image[:, :, pw:], image[:, :, :-pw])


class _Flat(torch.utils.data.Dataset):
    """Constant images: the masks alone show where randomness comes from."""

    image_size = 32

    def __len__(self) -> int:
        return 16

    def get(self, index, rng):
        return torch.zeros(3, 32, 32)


def _val_masks(num_workers: int) -> torch.Tensor:
    dm = InpaintDataModule(
        train=_Flat(),
        val=_Flat(),
        train_masks=M.free_form,
        eval_masks=M.thick,
        batch_size=4,
        num_workers=num_workers,
    )
    dm.setup("fit")
    return torch.cat([batch["mask"] for batch in dm.val_dataloader()])


def test_eval_masks_identical_across_workers_and_runs() -> None:
    serial = _val_masks(0)
    assert torch.equal(serial, _val_masks(2))
    assert torch.equal(serial, _val_masks(0))
    assert len({m.numpy().tobytes() for m in serial}) == len(serial)


def test_train_masks_differ_across_workers_and_epochs() -> None:
    dm = InpaintDataModule(
        train=_Flat(), train_masks=M.free_form, eval_masks=M.thick, batch_size=1, num_workers=2
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    first_epoch = [batch["mask"] for batch in loader]
    # Batch 0 comes from worker 0, batch 1 from worker 1: their first draws must differ.
    assert not torch.equal(first_epoch[0], first_epoch[1])
    second_epoch = [batch["mask"] for batch in loader]
    assert not torch.equal(first_epoch[0], second_epoch[0])
    assert len({m.numpy().tobytes() for m in first_epoch + second_epoch}) == 32


def test_train_keys_shard_ranks_and_resume_mid_epoch() -> None:
    def keys(rank, world, start=0, epoch=0):
        return list(EpochSampler(16, 0, rank, world, lambda: epoch, lambda e: start))

    rank0, rank1 = keys(0, 2), keys(1, 2)
    positions = [k[2] for k in rank0] + [k[2] for k in rank1]
    assert sorted(positions) == list(range(16))  # the ranks split the epoch exactly
    assert keys(0, 1, start=5) == keys(0, 1)[5:]  # resuming skips what was consumed
    assert [k[3] for k in keys(0, 1, epoch=1)] != [k[3] for k in keys(0, 1)]  # new order each epoch
    dataset = InpaintDataset(_Flat(), M.free_form, train=True, seed=0)
    # Different ranks (positions) draw different masks; the same key always draws the same.
    assert not torch.equal(dataset[rank0[0]]["mask"], dataset[rank1[0]]["mask"])
    assert torch.equal(dataset[rank1[3]]["mask"], dataset[rank1[3]]["mask"])


def _sample_data(train_masks, eval_masks, batch_size: int, **kwargs) -> InpaintDataModule:
    """The embedded photos at 64x64: 2 batches of training items, one of validation items."""
    return InpaintDataModule(
        train=SampleImages("train", image_size=64, length=2 * batch_size),
        val=SampleImages("val", image_size=64, length=batch_size),
        train_masks=train_masks,
        eval_masks=eval_masks,
        batch_size=batch_size,
        **kwargs,
    )


def test_batches_have_the_documented_layout() -> None:
    dm = _sample_data(M.rectangle, M.centered_rectangle, batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 64, 64)
    assert batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 1, 64, 64)
    assert set(batch["mask"].unique().tolist()) == {0.0, 1.0}
    assert batch["image"].min() >= -1
    assert batch["image"].max() <= 1
    assert dm.hole_ratios("val").tolist() == [0.25] * 4
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        InpaintDataModule(train=None, train_masks=M.rectangle, eval_masks=M.rectangle, batch_size=0)


@pytest.mark.parametrize("discount", [None, "box", "nearest_known", "none"])
def test_training_items_carry_the_hole_distance_only_for_the_nearest_known_discount(discount) -> None:
    dm = _sample_data(M.free_form, M.thick, batch_size=2, discount=discount)
    batch = next(iter(dm.train_dataloader()))
    if discount == "nearest_known":
        expected = torch.stack([M.hole_distance(m) for m in batch["mask"]])
        assert torch.equal(batch["hole_distance"], expected)
    else:
        assert "hole_distance" not in batch  # the box discount never reads it
    assert "hole_distance" not in next(iter(dm.val_dataloader()))
    with pytest.raises(
        ValueError, match=r"data\.discount must be 'box', 'nearest_known' or 'none', got 'gauss'"
    ):
        InpaintDataModule(train=None, train_masks=M.rectangle, eval_masks=M.rectangle, discount="gauss")


def test_the_lightning_internals_the_data_module_reads_are_still_there() -> None:
    """Lightning has no public accessor for ``use_distributed_sampler``; the data module reads
    the trainer's private connector to refuse Lightning's sampler under DDP (it would replace
    the resumable per-rank sampler). This fails when a Lightning release renames it."""
    import pytorch_lightning as pl

    for value in (True, False):
        trainer = pl.Trainer(accelerator="cpu", logger=False, use_distributed_sampler=value)
        assert trainer._accelerator_connector.use_distributed_sampler is value
