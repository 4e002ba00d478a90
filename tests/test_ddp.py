"""DDP on 2 CPU processes (gloo): training runs, and validation metrics synchronised across the
ranks equal a single-process evaluation of the same weights on the same data."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deepfill.data import masks as M
from deepfill.data.datamodule import InpaintDataModule
from deepfill.data.datasets import SampleImages
from deepfill.evaluation.means import InpaintingMetrics
from deepfill.inference import generator_from_checkpoint
from deepfill.utils.images import to_unit
from helpers.tiny import DDP_TINY, DDP_TINY_V2

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("family", ["v1", "v2"])
def test_ddp_cpu_trains_and_syncs_validation_metrics(family, tmp_path) -> None:
    run = tmp_path / "run"
    args = [
        *(DDP_TINY if family == "v1" else DDP_TINY_V2),
        "data.batch_size=2",
        "data.train.length=16",
        "data.val.length=6",
        "model.lpips_pretrained=false",
        "trainer.max_epochs=1",
        f"hydra.run.dir={run}",
        f"paths.log_dir={tmp_path}",
    ]
    script = Path(sys.executable).parent / "deepfill-train"
    result = subprocess.run(
        [str(script), *args], capture_output=True, text=True, cwd=tmp_path, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    logged = next(r for r in reversed(rows) if r.get("val/psnr"))
    # 16 items over 2 ranks, batch 2: 4 batches per rank, alternately a critic and a generator update.
    generator = generator_from_checkpoint(str(run / "checkpoints" / "last.ckpt"))
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert int(checkpoint["state_dict"]["generator_steps"]) == 2

    data = InpaintDataModule(
        train=None,
        val=SampleImages("val", 64, length=6),
        train_masks=M.free_form,
        eval_masks=M.thick,
        batch_size=2,
    )
    metrics = InpaintingMetrics(lpips=False)
    with torch.no_grad():
        for batch in data.val_dataloader():
            _, x2, _ = generator(batch["image"], batch["mask"])
            completed = x2 * batch["mask"] + batch["image"] * (1 - batch["mask"])
            metrics.update(to_unit(completed), to_unit(batch["image"]), batch["mask"])
    single = metrics.compute()
    for name in ("psnr", "ssim", "l1_hole", "l2_hole"):
        assert float(logged[f"val/{name}"]) == pytest.approx(single[name], rel=1e-4, abs=1e-5), name
