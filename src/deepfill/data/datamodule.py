"""Inpainting batches: images from a source, holes from a mask generator.

Batches are dicts ``{"image": (N,3,H,W) in [-1,1], "mask": (N,1,H,W) in {0,1}, "index": (N,)}``.

Randomness:
* evaluation (val/test) items are functions of ``(seed, index)`` only — image crop and mask —
  so they are identical across runs, ``num_workers`` and DDP ranks;
* training order and items are functions of ``(seed, epoch, position)``: :class:`EpochSampler`
  shuffles by ``(seed, epoch)`` and gives each rank its own positions, and the item at a
  position draws its crop and mask from ``default_rng([seed, epoch, position])``. No two
  workers, ranks or epochs draw the same masks, and nothing depends on worker processes.
  The data module records the position of every batch the model consumes and saves it in
  checkpoints, so a resumed run continues with exactly the batches and masks it would have
  seen (mid-epoch too).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from deepfill.data.datasets import ImageSource
from deepfill.data.masks import MaskGenerator, hole_distance, hole_ratio

__all__ = ["InpaintDataModule", "InpaintDataset"]


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class EpochSampler(torch.utils.data.Sampler):
    """Training keys ``(epoch, local, position, index)`` for one rank.

    The epoch's order is a permutation seeded by ``(seed, epoch)``; rank ``r`` of ``world`` takes
    positions ``r, r + world, ...`` (``local`` counts them), starting at ``start(epoch)`` so that
    a resumed epoch skips what was already trained on.
    """

    def __init__(
        self,
        length: int,
        seed: int,
        rank: int,
        world: int,
        epoch: Callable[[], int],
        start: Callable[[int], int],
        shuffle: bool = True,
    ) -> None:
        self.length, self.seed, self.rank, self.world, self.shuffle = length, seed, rank, world, shuffle
        self._epoch, self._start = epoch, start
        self.per_rank = length // world

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self):
        epoch = self._epoch()
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.length)
        else:
            order = np.arange(self.length)
        for local in range(self._start(epoch), self.per_rank):
            position = local * self.world + self.rank
            yield (epoch, local, position, int(order[position]))


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation items ``rank, rank + world, ...``: every item exactly once across ranks (no
    padding, so metrics summed across ranks equal the single-process ones)."""

    def __init__(self, length: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, length, world))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


class InpaintDataset(Dataset):
    """Pairs an image source with a mask generator.

    Args:
        images: the image source.
        masks: ``(height, width, rng) -> (1,H,W)`` mask generator.
        train: random items (see module doc) or deterministic evaluation items.
        seed: base seed.
        with_distance: training items carry their mask's hole distance (for the ``nearest_known``
            discount).
    """

    def __init__(
        self,
        images: ImageSource,
        masks: MaskGenerator,
        train: bool,
        seed: int = 0,
        with_distance: bool = False,
    ) -> None:
        self.images, self.masks, self.train, self.seed = images, masks, train, seed
        self.with_distance = with_distance

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int, int, int]) -> dict[str, torch.Tensor]:
        """``{"image": (3,S,S) in [-1,1], "mask": (1,S,S) 1 = hole, "index": ()}``; training items
        also carry ``"epoch"`` and ``"local"`` (this rank's position in the epoch), from which the data
        module records how far training got (for an exact mid-epoch resume), and with
        ``with_distance`` ``"hole_distance"`` ((1,S,S), see :func:`deepfill.data.masks.hole_distance`:
        the ``nearest_known`` discount from it costs no per-ring passes in the training step)."""
        if not self.train:
            index = int(key)
            image = self.images.get(index, None)
            mask = self.masks(image.shape[-2], image.shape[-1], np.random.default_rng([self.seed, index]))
            return {"image": image, "mask": mask, "index": torch.tensor(index)}
        # Keys come from EpochSampler; a bare index means epoch 0, position = index.
        epoch, local, position, index = key if isinstance(key, tuple) else (0, key, key, key)
        rng = np.random.default_rng([self.seed, epoch, position])
        image = self.images.get(index, rng)
        mask = self.masks(image.shape[-2], image.shape[-1], rng)
        item = {
            "image": image,
            "mask": mask,
            "index": torch.tensor(index),
            "epoch": torch.tensor(epoch),
            "local": torch.tensor(local),
        }
        if self.with_distance:
            item["hole_distance"] = hole_distance(mask)
        return item


class InpaintDataModule(pl.LightningDataModule):
    """Train / val / test inpainting data.

    Args:
        train, val, test: image sources (``val`` and ``test`` may be None; ``test`` defaults to
            ``val``).
        train_masks: mask generator for training (random).
        eval_masks: mask generator for val/test (deterministic per item).
        batch_size, eval_batch_size: loader batch sizes (``eval_batch_size`` defaults to
            ``batch_size``).
        num_workers, pin_memory, persistent_workers: ``DataLoader`` options; ``pin_memory="auto"``
            pins when a CUDA GPU is present (faster, non-blocking copies to it).
        seed: base seed of training draws; eval_seed: seed of the fixed evaluation items.
        image_size: expected side of every source's images (checked), or None.
        discount: the training losses' spatial discount (``model.discount``): ``"nearest_known"``
            has the workers precompute each training mask's hole distance; ``"box"`` or None
            do not need it.
    """

    def __init__(
        self,
        train: ImageSource | Callable[[], ImageSource] | None,
        train_masks: MaskGenerator,
        eval_masks: MaskGenerator,
        val: ImageSource | Callable[[], ImageSource] | None = None,
        test: ImageSource | Callable[[], ImageSource] | None = None,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool | str = "auto",
        persistent_workers: bool = False,
        seed: int = 0,
        eval_seed: int = 0,
        image_size: int | None = None,
        discount: str | None = None,
    ) -> None:
        super().__init__()
        if discount not in (None, "box", "nearest_known", "none"):
            raise ValueError(f"data.discount must be 'box', 'nearest_known' or 'none', got {discount!r}")
        self.discount = discount
        if image_size is not None and (image_size < 8 or image_size % 8):
            raise ValueError(f"data.image_size must be a positive multiple of 8, got {image_size!r}")
        self.image_size = image_size
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size!r}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers!r}")
        self._sources = {"train": train, "val": val, "test": test if test is not None else val}
        self.train_masks, self.eval_masks = train_masks, eval_masks
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        if pin_memory not in (True, False, "auto"):
            raise ValueError(f"data.pin_memory must be true, false or auto, got {pin_memory!r}")
        if pin_memory == "auto":
            pin_memory = torch.cuda.is_available()
        self.num_workers, self.pin_memory = num_workers, bool(pin_memory)
        self.persistent_workers = persistent_workers and num_workers > 0
        self.seed, self.eval_seed = seed, eval_seed
        self.datasets: dict[str, InpaintDataset] = {}
        # Training position: the epoch and how many of this rank's samples were consumed.
        self.position = {"epoch": -1, "done": 0}

    def _source(self, split: str) -> ImageSource | None:
        source = self._sources[split]
        if source is not None and not isinstance(source, Dataset):
            source = source()  # a factory (Hydra partial): build it lazily, once per process
            self._sources[split] = source
        size = getattr(source, "image_size", None)
        if (
            source is not None
            and self.image_size is not None
            and size is not None
            and size != self.image_size
        ):
            raise ValueError(
                f"data.{split} produces {size}px images but data.image_size is {self.image_size}"
            )
        return source

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in splits.get(stage or "fit", ("train", "val", "test")):
            if split in self.datasets:
                continue
            source = self._source(split)
            if source is None:
                continue
            train = split == "train"
            masks, seed = (self.train_masks, self.seed) if train else (self.eval_masks, self.eval_seed)
            with_distance = train and self.discount == "nearest_known"
            self.datasets[split] = InpaintDataset(source, masks, train, seed, with_distance)

    def _dataset(self, split: str) -> InpaintDataset:
        if split not in self.datasets:
            self.setup("fit" if split in ("train", "val") else "test")
        if split not in self.datasets:
            raise ValueError(f"no {split} data configured")
        return self.datasets[split]

    def _epoch(self) -> int:
        if self.trainer is not None:
            return self.trainer.current_epoch
        # Outside a trainer each new iteration is a new epoch.
        self._standalone_epoch = getattr(self, "_standalone_epoch", -1) + 1
        return self._standalone_epoch

    def _start(self, epoch: int) -> int:
        return self.position["done"] if self.position["epoch"] == epoch else 0

    def train_dataloader(self) -> DataLoader:
        dataset = self._dataset("train")
        rank, world = self._rank_world()
        trainer = self.trainer
        if trainer is not None and world > 1 and trainer._accelerator_connector.use_distributed_sampler:
            raise ValueError(
                "trainer.use_distributed_sampler must be false: InpaintDataModule shards the "
                "training data across ranks itself (resumable, with per-rank masks)"
            )
        if len(dataset) // world < self.batch_size:
            raise ValueError(
                f"training set has {len(dataset)} items: fewer than batch_size={self.batch_size} per rank"
            )
        sampler = EpochSampler(len(dataset), self.seed, rank, world, self._epoch, self._start)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def batches_per_epoch(self, world: int = 1) -> int:
        """Training batches each of ``world`` ranks gets per epoch (the last partial one dropped)."""
        return len(self._dataset("train")) // max(world, 1) // self.batch_size

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        # Called once per batch as the model consumes it (the loader's workers run ahead, so
        # the sampler's own state is not what was trained on): record the position here, from
        # the CPU tensors, before the transfer (reading it back from a GPU would stall it).
        if self.trainer is not None and self.trainer.training and "local" in batch:
            self.position = {"epoch": int(batch["epoch"][0]), "done": int(batch["local"].max()) + 1}
        return batch

    def state_dict(self) -> dict:
        return {"position": dict(self.position)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.position = dict(state_dict.get("position", self.position))

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return _rank_and_world()

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = self._dataset(split)
        rank, world = self._rank_world()
        sampler = ShardSampler(len(dataset), rank, world) if world > 1 else None
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def hole_ratios(self, split: str = "val", count: int | None = None) -> np.ndarray:
        """Hole ratios of the first ``count`` items of a split (for statistics and plots)."""
        self.setup()
        dataset = self.datasets[split]
        n = len(dataset) if count is None else min(count, len(dataset))
        return np.array([hole_ratio(dataset[i]["mask"]) for i in range(n)])
