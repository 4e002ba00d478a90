"""Inpainting batches: images from a source, holes from a mask generator.

Batches are dicts ``{"image": (N,3,H,W) in [-1,1], "mask": (N,1,H,W) in {0,1}, "index": (N,)}``.

Randomness:
* evaluation (val/test) items are functions of ``(seed, index)`` only — image crop and mask —
  so they are identical across runs, ``num_workers`` and DDP ranks;
* training items draw from a generator seeded by ``(seed, rank, worker id, the worker's torch
  seed)``: PyTorch gives each worker a fresh base seed every epoch, so no two workers, ranks or
  epochs draw the same masks, and ``seed_everything`` makes the run reproducible.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from .datasets import ImageSource
from .masks import MaskGenerator, hole_ratio

__all__ = ["InpaintDataModule", "InpaintDataset"]


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))


class InpaintDataset(Dataset):
    """Pairs an image source with a mask generator.

    Args:
        images: the image source.
        masks: ``(height, width, rng) -> (1,H,W)`` mask generator.
        train: random items (see module doc) or deterministic evaluation items.
        seed: base seed.
    """

    def __init__(self, images: ImageSource, masks: MaskGenerator, train: bool, seed: int = 0) -> None:
        self.images, self.masks, self.train, self.seed = images, masks, train, seed
        self.rank = 0
        self._rng: np.random.Generator | None = None
        self._rng_key: tuple | None = None

    def __len__(self) -> int:
        return len(self.images)

    def _train_rng(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        worker, worker_seed = (info.id, info.seed) if info is not None else (-1, 0)
        key = (self.rank, worker, worker_seed)
        if self._rng is None or key != self._rng_key:
            self._rng = np.random.default_rng([self.seed, self.rank, worker + 1, worker_seed % 2**63])
            self._rng_key = key
        return self._rng

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.train:
            rng = self._train_rng()
            image = self.images.get(index, rng)
        else:
            rng = np.random.default_rng([self.seed, index])
            image = self.images.get(index, None)
        mask = self.masks(image.shape[-2], image.shape[-1], rng)
        return {"image": image, "mask": mask, "index": torch.tensor(index)}


class InpaintDataModule(pl.LightningDataModule):
    """Train / val / test inpainting data.

    Args:
        train, val, test: image sources (``val`` and ``test`` may be None; ``test`` defaults to
            ``val``).
        train_masks: mask generator for training (random).
        eval_masks: mask generator for val/test (deterministic per item).
        batch_size, eval_batch_size: loader batch sizes (``eval_batch_size`` defaults to
            ``batch_size``).
        num_workers, pin_memory, persistent_workers: ``DataLoader`` options.
        seed: base seed of training draws; eval_seed: seed of the fixed evaluation items.
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
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 0,
        eval_seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size!r}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers!r}")
        self._sources = {"train": train, "val": val, "test": test if test is not None else val}
        self.train_masks, self.eval_masks = train_masks, eval_masks
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.seed, self.eval_seed = seed, eval_seed
        self.datasets: dict[str, InpaintDataset] = {}

    def _source(self, split: str) -> ImageSource | None:
        source = self._sources[split]
        if source is not None and not isinstance(source, Dataset):
            source = source()  # a factory (Hydra partial): build it lazily, once per process
            self._sources[split] = source
        return source

    def setup(self, stage: str | None = None) -> None:
        rank = self.trainer.global_rank if self.trainer is not None else _rank()
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in splits.get(stage or "fit", ("train", "val", "test")):
            if split in self.datasets:
                continue
            source = self._source(split)
            if source is None:
                continue
            train = split == "train"
            dataset = InpaintDataset(
                source,
                self.train_masks if train else self.eval_masks,
                train,
                self.seed if train else self.eval_seed,
            )
            dataset.rank = rank
            self.datasets[split] = dataset

    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        if split not in self.datasets:
            self.setup("fit" if split in ("train", "val") else "test")
        if split not in self.datasets:
            raise ValueError(f"no {split} data configured")
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size)

    def hole_ratios(self, split: str = "val", count: int | None = None) -> np.ndarray:
        """Hole ratios of the first ``count`` items of a split (for statistics and plots)."""
        self.setup()
        dataset = self.datasets[split]
        n = len(dataset) if count is None else min(count, len(dataset))
        return np.array([hole_ratio(dataset[i]["mask"]) for i in range(n)])
