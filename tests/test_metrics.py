"""Metrics: hole errors by hand, LPIPS through the wrapper equals the lpips package, missing weights."""

from __future__ import annotations

import lpips
import pytest
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from deepfill.evaluation import means as means_module
from deepfill.evaluation.means import InpaintingMetrics, LPIPSMetric
from deepfill.evaluation.metrics import (
    METRICS,
    Metric,
    higher_is_better,
    hole_l1,
    hole_l2,
    image_metrics,
    psnr,
)
from deepfill.utils.images import to_unit


def test_hole_errors_by_hand() -> None:
    prediction = torch.zeros(2, 3, 4, 4)
    target = torch.zeros(2, 3, 4, 4)
    target[0, :, 0, 0] = 0.5  # inside sample 0's hole
    target[0, :, 3, 3] = 1.0  # outside it: ignored
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, :, :2, :2] = 1
    mask[1, :, 2:, 2:] = 1
    assert hole_l1(prediction, target, mask).tolist() == pytest.approx([0.5 / 4, 0.0])
    assert hole_l2(prediction, target, mask).tolist() == pytest.approx([0.25 / 4, 0.0])


def test_lpips_wrapper_equals_the_lpips_package() -> None:
    torch.manual_seed(0)
    metric = LPIPSMetric(pretrained_backbone=False)
    torch.manual_seed(0)
    reference = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    a, b = torch.rand(3, 3, 64, 64), torch.rand(3, 3, 64, 64)
    metric.update(a[:2], b[:2])
    metric.update(a[2:], b[2:])
    with torch.no_grad():
        expected = reference(a * 2 - 1, b * 2 - 1).mean()
    assert metric.compute().item() == pytest.approx(expected.item(), rel=1e-5)
    assert not any(k.startswith("net") for k in metric.state_dict())  # kept out of checkpoints


def test_inpainting_metrics_match_torchmetrics_functional() -> None:
    torch.manual_seed(1)
    completed, target = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    mask = (torch.rand(4, 1, 32, 32) > 0.5).float()
    metrics = InpaintingMetrics(lpips=False)
    metrics.update(completed[:2], target[:2], mask[:2])
    metrics.update(completed[2:], target[2:], mask[2:])
    values = metrics.compute()
    # PSNR: the mean of per-image PSNRs (not the PSNR of the pooled MSE, which is lower here).
    per_image = [peak_signal_noise_ratio(completed[i], target[i], data_range=1.0).item() for i in range(4)]
    assert values["psnr"] == pytest.approx(sum(per_image) / 4, rel=1e-5)
    pooled = peak_signal_noise_ratio(completed, target, data_range=1.0).item()
    assert abs(values["psnr"] - pooled) > 1e-4
    assert values["ssim"] == pytest.approx(
        structural_similarity_index_measure(completed, target, data_range=1.0).item(), rel=1e-5
    )
    assert values["l1_hole"] == pytest.approx(hole_l1(completed, target, mask).mean().item(), rel=1e-5)
    assert "lpips" not in values


def test_missing_alexnet_weights_warn_in_one_line_or_stop(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(means_module, "alexnet_weights_path", lambda: tmp_path / "alexnet.pth")

    def no_network(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.warns(RuntimeWarning, match="LPIPS needs the AlexNet weights") as record:
        metrics = InpaintingMetrics(lpips=True)
    assert metrics.lpips is None
    assert "\n" not in str(record[0].message)
    assert "hub/checkpoints" in str(record[0].message) or str(tmp_path) in str(record[0].message)
    with pytest.raises(FileNotFoundError, match="LPIPS needs the AlexNet weights"):
        InpaintingMetrics(lpips=True, lpips_required=True)


def test_psnr_of_an_exact_restoration_is_capped_not_infinite() -> None:
    image = torch.rand(2, 3, 16, 16)
    values = psnr(image, image)
    assert torch.isfinite(values).all()
    assert values.tolist() == pytest.approx([100.0, 100.0])


def test_metrics_inside_bf16_autocast_equal_float32() -> None:
    """Validation runs inside Lightning's autocast (trainer=gpu_bf16): the metrics must still be
    computed in float32. Emulated with the CPU's bf16 autocast."""
    from deepfill.data.datasets import SampleImages
    from deepfill.data.masks import centered_rectangle, eval_mask

    photos = SampleImages("val", 64, length=4)
    target = to_unit(torch.stack([photos[i] for i in range(4)]))
    mask = torch.stack([eval_mask(centered_rectangle, 0, i, 64, 64) for i in range(4)])
    completed = (target + 0.05 * torch.randn_like(target) * mask).clamp(0, 1)
    torch.manual_seed(0)
    net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    reference = image_metrics(completed, target, mask, net)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = image_metrics(completed, target, mask, net)
        accumulated = InpaintingMetrics(lpips=False)
        accumulated.update(completed, target, mask)
        totals = accumulated.compute()
    for name, value in reference.items():
        assert under_autocast[name].dtype == torch.float32
        torch.testing.assert_close(under_autocast[name], value, rtol=1e-4, atol=1e-4)
    for name in ("psnr", "ssim", "l1_hole", "l2_hole"):
        assert totals[name] == pytest.approx(reference[name].mean().item(), rel=1e-4, abs=1e-4)


def test_each_metric_ranks_a_perfect_fill_above_a_poor_one_in_its_registered_direction() -> None:
    """The registry's direction, checked against the metric itself (a direction guessed from a
    name would rank a sweep or keep a checkpoint the wrong way round)."""
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 64, 64, generator=g)
    mask = torch.zeros(2, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    poor = target * (1 - mask) + 0.5 * mask
    net = LPIPSMetric(pretrained_backbone=False).net
    perfect_values = image_metrics(target * (1 - mask) + target * mask + 1e-3 * mask, target, mask, net)
    poor_values = image_metrics(poor, target, mask, net)
    assert set(perfect_values) == set(METRICS)
    for name, spec in METRICS.items():
        better = perfect_values[name] > poor_values[name]
        worse = perfect_values[name] < poor_values[name]
        assert bool((better if spec.higher_is_better else worse).all()), name


def test_directions_of_logged_names_table_columns_and_losses() -> None:
    assert higher_is_better("val/psnr") and higher_is_better("test/ssim_mean")
    assert higher_is_better("val/psnr_diff_ci_low")
    assert not higher_is_better("val/lpips") and not higher_is_better("val/l1_hole_ci_high")
    assert not higher_is_better("train/g_loss") and not higher_is_better("d_loss")
    with pytest.raises(ValueError, match="val/ms_ssim: not a metric of this project"):
        higher_is_better("val/ms_ssim")  # once guessed lower-is-better from its name


def test_a_new_metric_is_one_registry_entry(monkeypatch) -> None:
    """Registered once, it is computed per image, ranked in its direction and summarised."""
    from deepfill.evaluation.evaluate import comparison_lines

    def max_error(a, b, mask):
        return (a - b).abs().amax(dim=(1, 2, 3))

    monkeypatch.setitem(METRICS, "max_error", Metric("max_error", False, "max error", ".3f", "", max_error))
    target = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(1, 1, 16, 16)
    values = image_metrics(target + 0.25, target, mask)
    assert values["max_error"].tolist() == pytest.approx([0.25])
    assert not higher_is_better("val/max_error_mean")
    row = {"method": "deepfill", "images": 1} | {k: float(v) for k, v in values.items()}
    assert "max error 0.250" in comparison_lines([row])[0]
