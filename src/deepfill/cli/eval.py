"""``deepfill-eval``: score a generator on fixed evaluation masks, overall and by hole size.

    deepfill-eval weights=outputs/.../checkpoints/best.ckpt data=celebahq paths.data_dir=/data
    deepfill-eval weights=places2_v1.pt data=folder data.val.root=photos/ masks_dir=eval_masks/thick

Metrics on the composited output in [0,1]: PSNR, SSIM, LPIPS (when its weights are available),
L1 and L2 inside the hole; overall and in LaMa's 10 hole-ratio bins (0-10%, ..., 90-100%); FID,
KID, P-IDS and U-IDS against the real images (when the Inception weights are available;
``inception_weights=<file>`` offline), overall and in bins of at least 50 images.
Baselines in the same table for context: scikit-image's biharmonic inpainting and mean fill.
Writes ``metrics.csv`` and ``metrics.md`` to the output folder (and a W&B table with
``wandb=true``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from deepfill.cli.launch import hydra_command
from deepfill.utils.checkpoints import check_weights_path
from deepfill.utils.credentials import wandb_has_credentials
from deepfill.utils.errors import UserError
from deepfill.utils.files import writable_dir
from deepfill.utils.precision import check_compile, check_precision

if TYPE_CHECKING:
    import torch

__all__ = ["main", "run"]

# PyTorch, the data and the metrics are imported in run() once the weights path and the simple
# keys have been checked: a mistake there is answered before the imports.


def _batches(cfg: DictConfig, device: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    from hydra.utils import instantiate

    from deepfill.evaluation.evaluate import dataset_batches, mask_files

    datamodule = instantiate(cfg.data)
    datamodule.setup("validate")
    dataset = datamodule.datasets.get("val")
    if dataset is None:
        raise UserError("data: the evaluation needs a val source (data.val)")
    files = mask_files(Path(cfg.masks_dir)) if cfg.get("masks_dir") else None
    if isinstance(cfg.batch_size, bool) or not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise UserError(f"batch_size: must be a positive integer, got {cfg.batch_size!r}")
    return dataset_batches(dataset, cfg.limit, cfg.batch_size, device, files)


def run(cfg: DictConfig) -> list[dict]:
    """Evaluate ``cfg.weights`` and the baselines; writes the tables; returns the summary rows."""
    # Everything a user can get wrong is checked before the model loads.
    check_weights_path(cfg.weights)
    precision = check_precision(cfg.get("precision", "fp32"))
    compile_ = check_compile(cfg.get("compile", False))
    import torch

    from deepfill.evaluation.evaluate import (
        add_realism,
        evaluate,
        methods_with_baselines,
        summarise,
        write_tables,
    )
    from deepfill.evaluation.means import InpaintingMetrics
    from deepfill.evaluation.realism import RealismFeatures, load_inception
    from deepfill.inference import load_generator
    from deepfill.utils.cpu import configure_cpu
    from deepfill.utils.devices import resolve_device

    configure_cpu()
    device = resolve_device(cfg.device)
    methods_with_baselines(torch.nn.Identity(), cfg.baselines)
    writable_dir(cfg.output, "output")
    batches = _batches(cfg, device)
    generator = load_generator(cfg.weights, device)
    if compile_:
        generator.compile_stages()
    methods = methods_with_baselines(generator, cfg.baselines, precision)
    metrics = InpaintingMetrics(lpips=cfg.lpips, lpips_required=cfg.lpips_required)
    lpips_net = metrics.lpips.net.to(device) if metrics.lpips is not None else None
    realism = None
    if cfg.get("realism", True):
        inception = load_inception(cfg.get("inception_weights"), bool(cfg.get("realism_required", False)))
        realism = RealismFeatures(inception.to(device)) if inception is not None else None
    records = evaluate(batches, methods, lpips_net, realism)
    rows = summarise(records)
    notes = add_realism(rows, records, realism) if realism is not None else []
    csv_path, md_path = write_tables(rows, Path(cfg.output), title="\n".join(notes))
    if cfg.wandb:
        import wandb

        mode = "online" if wandb_has_credentials() else "offline"
        run_ = wandb.init(project=cfg.wandb_project, dir=str(Path(cfg.output)), mode=mode, job_type="eval")
        columns = list(rows[0])
        data = [[None if r.get(c) == "n/a" else r.get(c) for c in columns] for r in rows]  # n/a: empty
        run_.log({"eval/metrics": wandb.Table(columns=columns, data=data)})
        run_.finish()
    print(md_path.read_text(), flush=True)
    print(f"tables written to {csv_path} and {md_path}", flush=True)
    return rows


main = hydra_command("deepfill-eval", "eval", run)


if __name__ == "__main__":
    sys.exit(main())
