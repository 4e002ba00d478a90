"""deepfill-eval: tables with baselines and hole-ratio bins whose numbers match torchmetrics."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from PIL import Image
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from deepfill.cli.eval import run
from deepfill.data.masks import centered_rectangle, eval_mask
from deepfill.evaluation.evaluate import mean_fill, summarise
from deepfill.utils.config import CONFIG_DIR
from deepfill.utils.images import to_unit
from helpers.commands import call_cli
from helpers.tiny import eval_overrides, eval_workspace


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return eval_workspace(tmp_path_factory.mktemp("eval"), 5)


def compose_eval(root: Path, extra: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "eval",
            overrides=[*eval_overrides(root), "batch_size=2", *extra],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(root / "out")
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_eval_writes_tables_that_match_a_direct_computation(setup) -> None:
    rows = run(compose_eval(setup, []))
    table = list(csv.DictReader((setup / "out" / "metrics.csv").open()))
    assert {r["method"] for r in table} == {"deepfill", "biharmonic", "mean_fill"}
    overall = {r["method"]: r for r in table if r["hole_ratio"] == "all"}
    assert all(int(r["images"]) == 5 for r in overall.values())
    assert "| method | hole_ratio | images |" in (setup / "out" / "metrics.md").read_text()
    # The eval masks are the centred box: 25% holes, bin 20-30%.
    assert {r["hole_ratio"] for r in table} == {"all", "20-30%"}
    # Mean fill, recomputed directly with torchmetrics on the same images and masks.
    from deepfill.data.datasets import image_folder

    images = image_folder(setup / "photos", image_size=64)
    image = torch.stack([images[i] for i in range(5)])
    mask = torch.stack([eval_mask(centered_rectangle, 0, i, 64, 64) for i in range(5)])
    completed = mean_fill(image, mask)
    a, b = to_unit(completed), to_unit(image)
    psnr = np.mean(
        [peak_signal_noise_ratio(a[i : i + 1], b[i : i + 1], data_range=1.0).item() for i in range(5)]
    )
    ssim = structural_similarity_index_measure(a, b, data_range=1.0, reduction="none").mean().item()
    assert float(overall["mean_fill"]["psnr"]) == pytest.approx(psnr, rel=1e-5)
    assert float(overall["mean_fill"]["ssim"]) == pytest.approx(ssim, rel=1e-5)
    assert rows[0]["method"] == "deepfill"


def test_fixed_png_masks_and_binning(setup) -> None:
    masks = setup / "masks"
    masks.mkdir(exist_ok=True)
    for i, frac in enumerate((0.05, 0.15, 0.45, 0.05, 0.95)):
        m = np.zeros((64, 64), np.uint8)
        m[: round(64 * frac), :] = 255
        Image.fromarray(m).save(masks / f"{i:06d}.png")
    run(compose_eval(setup, [f"masks_dir={masks}", "baselines=[mean_fill]", "limit=5"]))
    table = list(csv.DictReader((setup / "out" / "metrics.csv").open()))
    bins = {r["hole_ratio"]: int(r["images"]) for r in table if r["method"] == "mean_fill"}
    assert bins == {"all": 5, "0-10%": 2, "10-20%": 1, "40-50%": 1, "90-100%": 1}


def test_summarise_bins() -> None:
    records = [
        {"method": "m", "hole_ratio": r, "psnr": p} for r, p in ((0.05, 10.0), (0.08, 20.0), (0.5, 30.0))
    ]
    rows = summarise(records)
    assert [(r["hole_ratio"], r["images"], r["psnr"]) for r in rows] == [
        ("all", 3, 20.0),
        ("0-10%", 2, 15.0),
        ("50-60%", 1, 30.0),
    ]


def test_cli_missing_weights_is_one_line(tmp_path) -> None:
    result = call_cli(
        "deepfill-eval", "weights=/nowhere/model.ckpt", f"paths.log_dir={tmp_path}", cwd=tmp_path
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines()[-1]
        == "deepfill-eval: error: weights: no such file or folder: /nowhere/model.ckpt"
    )


def test_validation_and_deepfill_eval_report_the_same_numbers(tmp_path) -> None:
    """One definition of every metric: the validation loop (Lightning, batch 4) and the
    evaluation path of deepfill-eval (batch 3) agree on the same weights, images and masks."""
    from deepfill.evaluation.evaluate import dataset_batches, evaluate
    from helpers.tiny import make_data, make_module, make_trainer

    module, data = make_module(), make_data()
    logged = make_trainer(tmp_path).validate(module, datamodule=data, verbose=False)[0]
    data.setup("validate")
    generator = module.generator.eval()
    batches = dataset_batches(data.datasets["val"], None, 3, "cpu")
    lpips_net = module.val_metrics.lpips.net
    rows = summarise(evaluate(batches, {"deepfill": lambda i, m: generator(i, m)[1]}, lpips_net))
    overall = rows[0]
    assert overall["hole_ratio"] == "all" and overall["images"] == 4
    for name in ("psnr", "ssim", "lpips", "l1_hole", "l2_hole"):
        assert logged[f"val/{name}"] == pytest.approx(overall[name], rel=1e-5, abs=1e-6), name


def test_the_contact_sheet_keeps_the_worst_and_best_completions(tmp_path) -> None:
    """By PSNR (higher is better) and by LPIPS (lower is better): the two worst at the top, the
    two best at the bottom, whatever the order the images come in; one row per image, a column per
    method between the input and the original."""
    from PIL import Image as PILImage

    from deepfill.evaluation.contact_sheet import ContactSheet

    scores = [20.0, 35.0, 10.0, 30.0, 25.0, float("nan")]
    for metric, higher, expected in (
        ("psnr", True, [("worst", 2), ("worst", 0), ("best", 3), ("best", 1)]),
        ("lpips", False, [("worst", 1), ("worst", 3), ("best", 0), ("best", 2)]),
    ):
        sheet = ContactSheet(metric, higher, count=2)
        for i, score in enumerate(scores):
            image = torch.full((3, 16, 20), i / 10.0)
            mask = torch.zeros(1, 16, 20)
            mask[:, 4:10, 5:12] = 1
            sheet.offer(i, score, image, mask, {"deepfill": image, "mean_fill": image * 0})
        assert [(kind, index) for kind, index, _ in sheet.shown()] == expected
        path = sheet.write(tmp_path / f"{metric}.png")
        with PILImage.open(path) as picture:
            assert picture.size == (150 + 4 * 24, 44 + 4 * 20)  # 4 columns, 4 rows
    assert ContactSheet("psnr", True).write(tmp_path / "none.png") is None
