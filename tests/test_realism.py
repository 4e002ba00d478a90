"""FID, KID, P-IDS and U-IDS: the formulas against independent computations (torchmetrics'
FID and KID on the same features; synthetic sets of known separability), the Inception
features with randomly initialised weights (nothing is downloaded), and deepfill-eval's
table with them and without the weights."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from deepfill.evaluation.realism import (
    FEATURES,
    InceptionFeatures,
    RealismFeatures,
    frechet_distance,
    inception_discriminative_scores,
    kernel_inception_distance,
    load_inception,
)
from helpers.commands import call_cli
from helpers.tiny import eval_overrides, eval_workspace


class _Given(torch.nn.Module):
    """A "feature extractor" that returns its input: torchmetrics then scores our features."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.num_features = dims

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _sets(n: int = 60, dims: int = 8, shift: float = 0.7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(n, dims))
    fake = rng.normal(size=(n, dims)) * 1.3 + shift
    return real, fake


def test_fid_equals_torchmetrics_on_the_same_features() -> None:
    from torchmetrics.image.fid import FrechetInceptionDistance

    for seed, shift in ((0, 0.0), (1, 0.7), (2, 3.0)):
        real, fake = _sets(shift=shift, seed=seed)
        theirs = FrechetInceptionDistance(feature=_Given(real.shape[1]), normalize=True)
        theirs.update(torch.from_numpy(real), real=True)
        theirs.update(torch.from_numpy(fake), real=False)
        assert frechet_distance(real, fake) == pytest.approx(float(theirs.compute()), rel=1e-5, abs=1e-6)
    assert frechet_distance(real, real) == pytest.approx(0.0, abs=1e-6)


def test_kid_equals_torchmetrics_on_the_same_features() -> None:
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = _sets(n=40, shift=0.5)
    # One subset holding every image: no sampling, the same estimate on both sides.
    theirs = KernelInceptionDistance(feature=_Given(real.shape[1]), subsets=1, subset_size=40, normalize=True)
    theirs.update(torch.from_numpy(real), real=True)
    theirs.update(torch.from_numpy(fake), real=False)
    mean, _ = kernel_inception_distance(real, fake, subsets=1, subset_size=40)
    assert mean == pytest.approx(float(theirs.compute()[0]), rel=1e-5)
    # Unbiased: two draws of one distribution score about 0, a shifted one clearly above.
    same, _ = kernel_inception_distance(*_sets(n=200, shift=0.0)[:1], _sets(n=200, seed=5)[0], subsets=20)
    shifted, spread = kernel_inception_distance(*_sets(n=200, shift=1.0), subsets=20)
    assert abs(same) < 0.02 < shifted - 3 * spread


def test_ids_follow_the_separability_of_the_sets() -> None:
    """Identical sets: U-IDS 0.5 (every point is on both sides), P-IDS 0; far apart: both 0;
    two unit Gaussians 2d apart along one axis: U-IDS is the Bayes error Phi(-d), and a
    completion out-scores its (independent) original with probability Phi(-sqrt(2) d)."""
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 4))
    assert inception_discriminative_scores(real, real) == (0.0, 0.5)
    assert inception_discriminative_scores(real, real + 50.0) == (0.0, 0.0)
    d = 0.5
    phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    real, fake = rng.normal(size=(4000, 2)), rng.normal(size=(4000, 2))
    real[:, 0] += d
    fake[:, 0] -= d
    p_ids, u_ids = inception_discriminative_scores(real, fake)
    assert u_ids == pytest.approx(phi(-d), abs=0.02)
    assert p_ids == pytest.approx(phi(-math.sqrt(2) * d), abs=0.02)
    with pytest.raises(ValueError, match="N >= 2 pairs"):
        inception_discriminative_scores(real[:3], fake[:2])


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory) -> Path:
    """A weights file of the Inception network, randomly initialised (the real file is a
    download): the feature machinery runs end to end without the network."""
    from torch_fidelity import feature_extractor_inceptionv3 as module

    folder = tmp_path_factory.mktemp("inception")
    torch.save({}, folder / "empty.pth")
    cls = module.FeatureExtractorInceptionV3
    original = cls.load_state_dict
    torch.manual_seed(0)
    try:
        cls.load_state_dict = lambda self, state, *args, **kwargs: None  # keep the random init
        network = cls(
            "inception-v3-compat", [str(FEATURES)], feature_extractor_weights_path=str(folder / "empty.pth")
        )
    finally:
        cls.load_state_dict = original
    # He initialisation keeps the activations' scale through the 94 layers (PyTorch's default
    # shrinks them into subnormal floats, which CPUs compute many times slower).
    for layer in network.modules():
        if isinstance(layer, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    path = folder / "random-inception.pth"
    torch.save(network.state_dict(), path)
    return path


def test_inception_features_of_images_in_0_1(random_inception) -> None:
    network = InceptionFeatures(random_inception)
    images = torch.rand(3, 3, 64, 80)
    features = network(images)
    assert features.shape == (3, FEATURES) and features.dtype == torch.float64
    assert torch.isfinite(features).all()
    # 8-bit quantised first, as saved PNGs are: less than half a level changes nothing.
    levels = (images * 255).round() / 255
    assert torch.equal(network(levels + 0.2 / 255), network(levels))
    assert not torch.allclose(features[0], features[1], rtol=1e-3, atol=0.0)
    collected = RealismFeatures(network)
    for batch in (images[:2], images[2:]):
        collected.add_real(batch)
        collected.add("copy", batch)
    assert collected.real().shape == (3, FEATURES)
    scores = collected.scores("copy")
    assert scores["fid"] == pytest.approx(0.0, abs=1e-3) and scores["u_ids"] == 0.5


def test_missing_inception_weights_are_one_line_and_the_rest_still_runs(tmp_path) -> None:
    missing = tmp_path / "nowhere.pth"
    with pytest.warns(
        RuntimeWarning, match=r"need the Inception weights at .*nowhere\.pth; no such file: download https://"
    ):
        assert load_inception(missing) is None
    with pytest.raises(FileNotFoundError, match="inception_weights=<file>"):
        load_inception(missing, required=True)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Six photos and converted weights: what deepfill-eval reads."""
    return eval_workspace(tmp_path_factory.mktemp("realism"), 6)


def _eval(root: Path, out: Path, *extra: str):
    overrides = [*eval_overrides(root), "batch_size=4", f"output={out}", f"hydra.run.dir={out}/run"]
    return call_cli("deepfill-eval", *overrides, *extra, cwd=root)


def test_eval_reports_the_set_metrics_of_every_method(photos, random_inception, tmp_path) -> None:
    import csv

    result = _eval(photos, tmp_path / "out", f"inception_weights={random_inception}")
    assert result.returncode == 0, result.stderr[-2000:]
    table = list(csv.DictReader((tmp_path / "out" / "metrics.csv").open()))
    overall = {r["method"]: r for r in table if r["hole_ratio"] == "all"}
    assert set(overall) == {"deepfill", "biharmonic", "mean_fill"}
    for row in overall.values():
        for name in ("fid", "kid", "kid_std", "p_ids", "u_ids"):
            assert math.isfinite(float(row[name])), (name, row)
        assert 0.0 <= float(row["u_ids"]) <= 0.5 and 0.0 <= float(row["p_ids"]) <= 1.0
    # Six images: the hole-ratio bin is too small for set metrics, and the table says so.
    binned = [r for r in table if r["hole_ratio"] != "all"]
    assert binned and all(r["fid"] == "n/a" for r in binned)
    assert "fewer than 50 images" in (tmp_path / "out" / "metrics.md").read_text()


def test_eval_without_the_inception_weights_says_so_in_one_line_and_scores_the_rest(photos, tmp_path) -> None:
    import csv

    missing = tmp_path / "inception.pth"
    result = _eval(photos, tmp_path / "out", f"inception_weights={missing}")
    assert result.returncode == 0, result.stderr[-2000:]
    warned = [line for line in result.stderr.splitlines() if "Inception weights" in line]
    assert len(warned) == 1 and str(missing) in warned[0] and "inception_weights=" in warned[0], result.stderr
    table = list(csv.DictReader((tmp_path / "out" / "metrics.csv").open()))
    assert "psnr" in table[0] and "fid" not in table[0]
    required = _eval(photos, tmp_path / "again", f"inception_weights={missing}", "realism_required=true")
    assert required.returncode == 2
    lines = required.stderr.strip().splitlines()
    assert len(lines) == 1, required.stderr
    expected = "deepfill-eval: error: FID, KID, P-IDS and U-IDS need the Inception weights at"
    assert lines[0].startswith(expected)


def test_eval_by_protocol_writes_a_table_per_protocol(photos, random_inception, tmp_path) -> None:
    import csv

    out = tmp_path / "out"
    result = _eval(photos, out, "protocol=[thick,large]", f"inception_weights={random_inception}")
    assert result.returncode == 0, result.stderr[-2000:]
    ratios = {}
    for protocol in ("thick", "large"):
        table = list(csv.DictReader((out / protocol / "metrics.csv").open()))
        assert {r["method"] for r in table} == {"deepfill", "biharmonic", "mean_fill"}
        ratios[protocol] = sorted(r["hole_ratio"] for r in table if r["method"] == "deepfill")
    assert ratios["thick"] != ratios["large"]  # each protocol's own masks
    for protocol in ("thick", "large"):  # the worst and best completions, by PSNR here (no LPIPS)
        assert (out / protocol / "contact_sheet.png").is_file()
        assert f"contact sheet: {out / protocol / 'contact_sheet.png'}" in result.stdout
    summary = (out / "protocols.md").read_text()
    assert "## thick" in summary and "## large" in summary
    assert "| method | images | FID | KID | P-IDS | U-IDS | PSNR | SSIM | L1 in the hole |" in summary
    rows = list(csv.DictReader((out / "protocols.csv").open()))
    assert [(r["protocol"], r["method"]) for r in rows][:3] == [
        ("thick", "deepfill"),
        ("thick", "biharmonic"),
        ("thick", "mean_fill"),
    ]
    assert all(int(r["images"]) == 6 and math.isfinite(float(r["fid"])) for r in rows)
    wrong = _eval(photos, tmp_path / "wrong", "protocol=huge", "realism=false")
    assert wrong.returncode == 2
    assert wrong.stderr.strip() == (
        "deepfill-eval: error: protocol: 'huge' is not a protocol; choose from thin, medium, thick, small, "
        "large, box, strokes"
    )
