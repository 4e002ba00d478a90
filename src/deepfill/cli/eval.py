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

import math
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


def _dataset(cfg: DictConfig):
    """The evaluation images (``data.val``), the keys of the batches checked."""
    from hydra.utils import instantiate

    from deepfill.evaluation.evaluate import mask_files

    datamodule = instantiate(cfg.data)
    datamodule.setup("validate")
    dataset = datamodule.datasets.get("val")
    if dataset is None:
        raise UserError("data: the evaluation needs a val source (data.val)")
    if isinstance(cfg.batch_size, bool) or not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise UserError(f"batch_size: must be a positive integer, got {cfg.batch_size!r}")
    if cfg.get("masks_dir"):
        mask_files(Path(cfg.masks_dir))
    return dataset


def _batches(
    cfg: DictConfig, dataset, device: str, protocol: str | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of one evaluation: the masks of ``protocol``, of ``masks_dir``, or the mask
    group's evaluation masks."""
    from deepfill.data.masks import PRESETS
    from deepfill.evaluation.evaluate import dataset_batches, mask_files

    files = mask_files(Path(cfg.masks_dir)) if cfg.get("masks_dir") else None
    masks = (PRESETS[protocol], int(cfg.seed)) if protocol is not None else None
    return dataset_batches(dataset, cfg.limit, cfg.batch_size, device, files, masks)


def _protocols(cfg: DictConfig) -> list[str]:
    """The mask protocols asked for (``protocol=thick`` or ``protocol=[thin,thick]``); [] for the
    mask group's evaluation masks."""
    from omegaconf import ListConfig

    from deepfill.data.masks import PROTOCOLS

    asked = cfg.get("protocol")
    if asked is None:
        return []
    names = [str(n) for n in asked] if isinstance(asked, ListConfig | list | tuple) else [str(asked)]
    unknown = [n for n in names if n not in PROTOCOLS]
    if unknown or not names:
        wrong = repr(unknown[0]) if unknown else "an empty list"
        raise UserError(f"protocol: {wrong} is not a protocol; choose from {', '.join(PROTOCOLS)}")
    if cfg.get("masks_dir"):
        raise UserError("protocol and masks_dir both give the masks; use one of them")
    return list(dict.fromkeys(names))


def run(cfg: DictConfig) -> list[dict]:
    """Evaluate ``cfg.weights`` and the baselines; writes the tables; returns the summary rows."""
    # Everything a user can get wrong is checked before the model loads.
    check_weights_path(cfg.weights)
    precision = check_precision(cfg.get("precision", "fp32"))
    compile_ = check_compile(cfg.get("compile", False))
    import torch
    from rich.progress import track

    from deepfill.evaluation.contact_sheet import ContactSheet
    from deepfill.evaluation.evaluate import (
        add_realism,
        evaluate,
        methods_with_baselines,
        summarise,
        write_protocol_tables,
        write_tables,
    )
    from deepfill.evaluation.means import InpaintingMetrics
    from deepfill.evaluation.metrics import METRICS
    from deepfill.evaluation.realism import RealismFeatures, load_inception
    from deepfill.inference import load_generator
    from deepfill.utils.cpu import configure_cpu
    from deepfill.utils.devices import resolve_device

    reused = configure_cpu()
    device = resolve_device(cfg.device)
    methods_with_baselines(torch.nn.Identity(), cfg.baselines)
    protocols = _protocols(cfg)
    out = writable_dir(cfg.output, "output")
    dataset = _dataset(cfg)
    _batches(cfg, dataset, device, None)  # the limit and the mask files checked before the model loads
    from deepfill.models import CPU_CHUNK_BYTES_REUSED

    generator = load_generator(cfg.weights, device, CPU_CHUNK_BYTES_REUSED if reused else None)
    if compile_:
        generator.compile_stages()
    methods = methods_with_baselines(generator, cfg.baselines, precision)
    metrics = InpaintingMetrics(lpips=cfg.lpips, lpips_required=cfg.lpips_required)
    lpips_net = metrics.lpips.net.to(device) if metrics.lpips is not None else None
    inception = None
    if cfg.get("realism", True):
        inception = load_inception(cfg.get("inception_weights"), bool(cfg.get("realism_required", False)))
        inception = inception.to(device) if inception is not None else None
    all_rows = []
    for protocol in protocols or [None]:
        realism = RealismFeatures(inception) if inception is not None else None
        ranking = "lpips" if lpips_net is not None else "psnr"
        sheet = ContactSheet(ranking, METRICS[ranking].higher_is_better)
        count = min(len(dataset), cfg.limit or len(dataset))
        batches = track(
            _batches(cfg, dataset, device, protocol),
            total=math.ceil(count / cfg.batch_size),
            description=f"evaluating {protocol or 'masks'}: {count} images",
            transient=True,
        )
        records = evaluate(batches, methods, lpips_net, realism, sheet)
        rows = summarise(records)
        notes = add_realism(rows, records, realism) if realism is not None else []
        folder = writable_dir(out / protocol if protocol else out, "output")
        title = "\n".join([f"Protocol: {protocol}" if protocol else "", *notes]).strip()
        csv_path, md_path = write_tables(rows, folder, title=title)
        picture = sheet.write(
            folder / "contact_sheet.png", f"{protocol or 'evaluation'}: deepfill, worst and best by {ranking}"
        )
        print(f"contact sheet: {picture}", flush=True)
        print(md_path.read_text(), flush=True)
        all_rows += [{"protocol": protocol or "mask", **row} for row in rows]
    if protocols:
        csv_path, md_path = write_protocol_tables(all_rows, out)
        print(md_path.read_text(), flush=True)
    if cfg.wandb:
        import wandb

        mode = "online" if wandb_has_credentials() else "offline"
        run_ = wandb.init(project=cfg.wandb_project, dir=str(out), mode=mode, job_type="eval")
        columns = list(dict.fromkeys(c for r in all_rows for c in r))
        data = [[None if r.get(c) == "n/a" else r.get(c) for c in columns] for r in all_rows]  # n/a: empty
        run_.log({"eval/metrics": wandb.Table(columns=columns, data=data)})
        run_.finish()
    print(f"tables written to {csv_path} and {md_path}", flush=True)
    return all_rows if protocols else [{k: v for k, v in r.items() if k != "protocol"} for r in all_rows]


main = hydra_command("deepfill-eval", "eval", run)


if __name__ == "__main__":
    sys.exit(main())
