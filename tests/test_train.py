"""The Hydra configs compose; every experiment runs a fast_dev_run step; bad configs fail clearly."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from PIL import Image

from deepfill.cli.train import train
from deepfill.utils.config import CONFIG_DIR
from deepfill.utils.validation import ConfigError, validate_config
from helpers.commands import call_cli
from helpers.tiny import TINY, compose_cfg, options, tiny

_COMPARISON = (
    r"(deepfill|biharmonic|mean_fill)\s+PSNR\s+([\d.]+) dB\s+SSIM ([\d.]+)\s+L1 in the hole ([\d.]+)"
    r"\s+\((\d+) images\)"
)


@pytest.fixture(scope="module")
def flist_dir(tmp_path_factory) -> Path:
    """A tiny dataset in the official flist layout, for the paper experiments."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for name in ("places2", "celebahq", "imagenet"):
        (root / name / "images").mkdir(parents=True)
        lines = []
        for i in range(6):
            path = root / name / "images" / f"{i}.jpg"
            Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(path)
            lines.append(f"images/{i}.jpg")
        for split in ("train", "val"):
            (root / name / f"{split}.flist").write_text("\n".join(lines) + "\n")
    # data=flist (train.flist, val.flist at the top) and data=folder (photos/train, photos/val).
    for split in ("train", "val"):
        (root / f"{split}.flist").write_text("\n".join(f"places2/images/{i}.jpg" for i in range(6)) + "\n")
        (root / "photos" / split).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(
                root / "photos" / split / f"{i}.png"
            )
    return root


@pytest.mark.parametrize(
    ("group", "name"),
    [
        (g, n)
        for g in (
            "model",
            "loss",
            "optim",
            "data",
            "mask",
            "trainer",
            "logger",
            "callbacks",
            "debug",
            "launcher",
        )
        for n in options(g)
    ],
)
def test_every_config_option_composes(group, name, tmp_path) -> None:
    """Each option composes, passes the config checks, and its own values are what the composed
    config holds (an option shadowed by another layer, or a misplaced package, would not be)."""
    # The model chooses its loss and optimiser (its own defaults list): chosen as group@package.
    chosen_as = {"loss": "loss@model.loss", "optim": "optim@model"}.get(group, group)
    cfg = compose_cfg([f"{chosen_as}={name}"], tmp_path)
    validate_config(cfg)
    path = CONFIG_DIR / group / f"{name}.yaml"
    header = re.search(r"^# @package (\S+)", path.read_text(), flags=re.M)
    declared = header.group(1) if header else group
    package = {"_global_": "", "_group_": group}.get(declared, declared)
    prefix = f"{package}." if package else ""
    leaves = _leaves(OmegaConf.to_container(OmegaConf.load(path), resolve=False))
    checked = 0
    for key, value in leaves:
        if key.split(".")[0] == "defaults" or "${" in repr(value):
            continue  # what other layers and interpolations decide
        composed = OmegaConf.select(cfg, prefix + key)
        if isinstance(composed, DictConfig | ListConfig):
            composed = OmegaConf.to_container(composed, resolve=True)
        # A typed config node may hold the option's value converted (a launcher's 1 as "1").
        same = composed == value or (type(composed) is not type(value) and str(composed) == str(value))
        assert same, f"{group}={name}: {prefix + key} is {composed!r}, the option says {value!r}"
        checked += 1
    assert cfg.hydra.runtime.choices[chosen_as] == name
    if not checked:  # made of its defaults list and interpolations: the group is there
        assert OmegaConf.select(cfg, package) if package else cfg, f"{group}={name}: composed to nothing"


def _leaves(node, prefix: str = "") -> list[tuple[str, object]]:
    """Every (dotted key, value) of a plain config mapping whose value is not a mapping."""
    if not isinstance(node, dict) or not node:
        return [(prefix, node)] if prefix else []
    return [
        leaf
        for key, value in node.items()
        for leaf in _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    ]


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_runs_a_fast_dev_run_step(experiment, tmp_path, flist_dir) -> None:
    cfg = compose_cfg(
        [f"experiment={experiment}", "debug=fast_dev_run", f"paths.data_dir={flist_dir}", *tiny(experiment)],
        tmp_path,
    )
    metrics = train(cfg)
    assert np.isfinite(metrics["train/g_loss"]) and np.isfinite(metrics["train/d_loss"])
    assert np.isfinite(metrics["val/psnr"])


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_preset_starts_on_short_data_with_validation_each_epoch(
    experiment, tmp_path, flist_dir, capsys
) -> None:
    """Presets validate every N batches, sized for their full data. Shorter data and validation
    counted per epoch (which Lightning refuses when N exceeds the epoch) still train."""
    cfg = compose_cfg(
        [
            f"experiment={experiment}",
            f"paths.data_dir={flist_dir}",
            *tiny(experiment),
            "data.batch_size=2",
            "trainer.max_epochs=2",
            "trainer.max_steps=-1",
            "trainer.check_val_every_n_epoch=1",
            "+trainer.limit_train_batches=2",
            "+trainer.limit_val_batches=1",
            "model.pretrain_coarse_steps=1",
            "model.reconstruction_steps=1",
            "baseline_comparison=null",
        ],
        tmp_path,
    )
    metrics = train(cfg)
    assert (
        "is longer than an epoch (2 batches): validating at the end of every 1 epoch"
        in capsys.readouterr().out
    )
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    assert "val/psnr" in metrics


@pytest.mark.parametrize("data", options("data"))
@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_trains_on_every_data_option(experiment, data, tmp_path, flist_dir) -> None:
    """A preset sets no key that only some image sources have: `experiment=quickstart data=folder`
    (your own photos with the quickstart's recipe) builds and serves batches like any other."""
    overrides = [f"experiment={experiment}", f"data={data}", f"paths.data_dir={flist_dir}"]
    overrides += [
        "data.image_size=64",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.persistent_workers=false",
    ]
    cfg = compose_cfg(overrides, tmp_path)
    assert HydraConfig.get().runtime.choices["data"] == data  # the command line's choice wins
    validate_config(cfg)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape == (2, 3, 64, 64) and batch["mask"].shape == (2, 1, 64, 64)
    assert datamodule.datasets["val"][0]["image"].shape == (3, 64, 64)


@pytest.mark.parametrize("experiment", [e for e in options("experiment") if e.endswith("_v1")])
def test_experiment_presets_carry_the_paper_settings(experiment, tmp_path) -> None:
    cfg = compose_cfg([f"experiment={experiment}"], tmp_path)
    assert cfg.data.image_size == 256 and cfg.data.batch_size == 16
    # The paper trained in float32 (TF32 matmuls allowed), from TF's default initialisation.
    assert cfg.trainer.precision == "32-true" and cfg.float32_matmul_precision == "high"
    assert cfg.model.generator.init == "glorot_uniform"
    assert cfg.model.global_critic.init == cfg.model.local_critic.init == "glorot_uniform"
    assert cfg.model.pretrain_coarse_steps == 0
    assert cfg.model.n_critic == 5 and cfg.model.optimizer.lr == 1e-4
    assert list(cfg.model.optimizer.betas) == [0.5, 0.9]
    assert dict(cfg.model.loss) == {
        "coarse": 1.2,
        "l1": 1.2,
        "ae": 1.2,
        "gan": 0.001,
        "global_wgan": 1.0,
        "gp": 10.0,
        "l2": 0.0,  # not in the paper: off
    }
    assert cfg.model.discount == "box" and cfg.model.local_critic.input_size == 128
    assert cfg.data.discount == "box"  # no hole distances computed for a loss that never reads them


def test_quickstart_trains_and_writes_checkpoints_metrics_and_grids(tmp_path, capsys) -> None:
    overrides = [
        "experiment=quickstart",
        *TINY,
        "data.train.length=8",
        "data.val.length=3",
        # Validation at each epoch's end (the recipe's interval is longer than this data). The
        # recipe's max_steps stays set: resuming a finished run with one more epoch must train it.
        "trainer.check_val_every_n_epoch=1",
        "trainer.val_check_interval=1.0",
        "trainer.log_every_n_steps=1",
        # Every phase of the recipe: coarse pre-training, reconstruction, adversarial.
        "model.pretrain_coarse_steps=1",
        "model.reconstruction_steps=2",
        "model.lr_decay_steps=6",
        "model.log_images_every_n_steps=2",
    ]
    train(compose_cfg([*overrides, "trainer.max_epochs=2"], tmp_path))
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    # It ends with one line per method on the validation images, the numbers deepfill-eval
    # gives for the same weights, images and masks.
    printed = capsys.readouterr().out
    lines = {m.group(1): m.groups()[1:] for m in re.finditer(_COMPARISON, printed)}
    assert set(lines) == {"deepfill", "biharmonic", "mean_fill"}, printed[-2000:]
    from deepfill.cli.eval import run as run_eval

    eval_cfg = compose_cfg(
        ["data.image_size=64", "data.val.length=3", "lpips=false", "mask=box_or_strokes"],
        tmp_path / "eval",
        config_name="eval",
        extra={"weights": str(tmp_path / "checkpoints" / "last.ckpt")},
    )
    rows = {r["method"]: r for r in run_eval(eval_cfg) if r["hole_ratio"] == "all"}
    for method, (psnr, ssim, l1, images) in lines.items():
        assert int(images) == 3
        assert float(psnr) == pytest.approx(rows[method]["psnr"], abs=0.01), method
        assert float(ssim) == pytest.approx(rows[method]["ssim"], abs=0.001), method
        assert float(l1) == pytest.approx(rows[method]["l1_hole"], abs=0.0001), method
    assert "| deepfill |" in (tmp_path / "comparison.md").read_text()
    assert list((tmp_path / "checkpoints").glob("best-*.ckpt"))
    metrics = (tmp_path / "csv" / "metrics.csv").read_text()
    assert "val/psnr" in metrics and "train/g_loss" in metrics
    assert list((tmp_path / "csv" / "images").glob("train_samples_*.png"))
    # Resuming from last.ckpt continues (one more epoch).
    last = tmp_path / "checkpoints" / "last.ckpt"
    resumed = compose_cfg([*overrides, "trainer.max_epochs=3", f"ckpt_path={last}"], tmp_path / "resumed")
    train(resumed)
    assert (tmp_path / "resumed" / "checkpoints" / "last.ckpt").is_file()
    rows = (tmp_path / "resumed" / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    epochs = {row.split(",")[header.index("epoch")] for row in rows[1:]} - {""}
    assert epochs == {"2"}  # epochs 0 and 1 came from the checkpoint


@pytest.mark.parametrize("arm", options("coarse"))
def test_each_coarse_arm_of_the_quickstart_study_builds_its_schedule(arm, tmp_path) -> None:
    """The arms of +sweep=quickstart_coarse: each composes on the quickstart, keeps the same
    reconstruction-and-after schedule shape (decay over every update), and builds its module."""
    cfg = compose_cfg(["experiment=quickstart", f"+coarse={arm}"], tmp_path)
    validate_config(cfg)
    arm_cfg = OmegaConf.load(CONFIG_DIR / "coarse" / f"{arm}.yaml")
    for key in ("coarse_scale", "pretrain_coarse_steps", "reconstruction_steps", "lr_decay_steps"):
        assert cfg.model[key] == arm_cfg.model[key]
    assert cfg.model.lr_decay_steps == cfg.model.pretrain_coarse_steps + cfg.model.reconstruction_steps
    assert cfg.trainer.max_steps == cfg.model.lr_decay_steps
    module = instantiate(cfg.model)
    assert module.coarse_scale == arm_cfg.model.coarse_scale


@pytest.mark.parametrize("betas", options("quickstart_betas"))
@pytest.mark.parametrize("arm", options("quickstart_short"))
def test_each_arm_of_the_short_quickstart_study_takes_the_recipes_time(arm, betas, tmp_path) -> None:
    """The arms of +sweep=quickstart_short: fixed schedules (no budget) of the same time as the
    recipe's 0.3x, counting an update of both stages as 2.9 coarse ones, the decay over every
    update, either Adam's betas, and a module that builds."""
    overrides = [
        "experiment=quickstart",
        "+sweep=quickstart_short",
        f"+quickstart_short={arm}",
        f"+quickstart_betas={betas}",
    ]
    cfg = compose_cfg(overrides, tmp_path)
    validate_config(cfg)
    assert cfg.budget is None
    coarse, both = cfg.model.pretrain_coarse_steps, cfg.model.reconstruction_steps
    assert cfg.model.lr_decay_steps == cfg.trainer.max_steps == coarse + both
    assert abs(coarse + 2.9 * both - (152 + 2.9 * 128)) < 5
    assert list(cfg.model.optimizer.betas) == {"paper": [0.5, 0.9], "usual": [0.9, 0.999]}[betas]
    module = instantiate(cfg.model)
    assert module.pretrain_coarse_steps == coarse


# Seconds per update (coarse, both stages) of the quickstart generator by cnum, measured side by
# side on the 2-core Xeon (256², batch 2): what makes the arms of one study take the same time.
WIDTH_UPDATE_SECONDS = {16: (0.138, 0.395), 12: (0.100, 0.290), 8: (0.062, 0.195)}


@pytest.mark.parametrize("arm", options("quickstart_width"))
def test_each_arm_of_the_width_study_takes_the_time_of_cnum_16(arm, tmp_path) -> None:
    """The arms of +sweep=quickstart_width: fixed schedules (no budget), the decay over every
    update, its cnum in the module, and the time of cnum 16 at the same schedule share."""
    overrides = ["experiment=quickstart", "+sweep=quickstart_width", f"+quickstart_width={arm}"]
    cfg = compose_cfg(overrides, tmp_path)
    validate_config(cfg)
    assert cfg.budget is None
    coarse, both = cfg.model.pretrain_coarse_steps, cfg.model.reconstruction_steps
    assert cfg.model.lr_decay_steps == cfg.trainer.max_steps == coarse + both
    assert cfg.trainer.max_steps % cfg.trainer.val_check_interval == 0
    cnum, share = (int(part) for part in arm.removeprefix("cnum").split("_"))
    baseline = OmegaConf.load(CONFIG_DIR / "quickstart_width" / f"cnum16_{share}.yaml").model

    def seconds(width: int, coarse: int, both: int) -> float:
        return coarse * WIDTH_UPDATE_SECONDS[width][0] + both * WIDTH_UPDATE_SECONDS[width][1]

    expected = seconds(16, baseline.pretrain_coarse_steps, baseline.reconstruction_steps)
    assert abs(seconds(cnum, coarse, both) / expected - 1) < 0.02
    assert instantiate(cfg.model).generator.config["cnum"] == cnum


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "+model.n_critc=3",
            "model.n_critc: unknown key for deepfill.training.module.DeepFillModule "
            "(did you mean 'n_critic'?)",
        ),
        ("+data.batchsize=3", "data.batchsize: unknown key"),
        ("model.generator.cnum=abc", "model.generator.cnum: expected an integer, got 'abc'"),
    ],
)
def test_misspelt_keys_and_wrong_kinds_name_the_key(override, message, tmp_path) -> None:
    cfg = compose_cfg([override], tmp_path)
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "model.generator.attention.ksize=0",
            "model.generator.attention.ksize must be a positive integer, got 0",
        ),
        ("model.loss.gan=-1", "model.loss.gan must be >= 0, got -1"),
        ("model.n_critic=0", "model.n_critic must be >= 1, got 0"),
        ("model.coarse_scale=0", "model.coarse_scale must be in (0, 1], got 0"),
        (
            "model.coarse_scale=0.3",
            "model.coarse_scale=0.3 gives the coarse pre-training images of side 22; it must be a "
            "positive multiple of 4 (data.image_size=72)",
        ),
        ("model.optimizer.lr=-1", "model.optimizer: Invalid learning rate: -1"),
        ("model.generator.attention.rate=4", "data.image_size must be divisible by 4 * attention rate = 16"),
        ("data.image_size=100", "data.image_size must be a positive multiple of 8, got 100"),
    ],
)
def test_invalid_values_are_judged_by_the_constructors_in_one_line(override, message, tmp_path) -> None:
    """One source of truth: the config check passes the value on, the constructor refuses it,
    and the error names the full key."""
    from deepfill.utils.errors import is_user_error, user_error_message

    cfg = compose_cfg(["data.image_size=72", override], tmp_path)
    validate_config(cfg)  # keys and kinds are fine

    def build() -> None:
        instantiate(cfg.data)
        instantiate(cfg.model)

    with pytest.raises(InstantiationException) as info:
        build()
    assert is_user_error(info.value)
    assert message in user_error_message(info.value)
    assert "\n" not in user_error_message(info.value)


def test_an_even_attention_patch_is_allowed(tmp_path) -> None:
    """The official layer takes any patch size; the config check no longer refuses even ones."""
    cfg = compose_cfg(["model.generator.attention.ksize=4"], tmp_path)
    validate_config(cfg)
    assert instantiate(cfg.model.generator).refine.attention.ksize == 4


def _cli(*args: str, cwd: Path):
    return call_cli("deepfill-train", *args, cwd=cwd)


def test_cli_reports_bad_input_in_one_line(tmp_path) -> None:
    result = _cli("model.generator.attention.ksize=0", f"paths.log_dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("deepfill-train")]
    assert lines == [
        "deepfill-train: error: model.generator.attention.ksize must be a positive integer, got 0"
    ]
    missing = _cli(
        "debug=fast_dev_run", "ckpt_path=/nowhere/last.ckpt", f"paths.log_dir={tmp_path}", cwd=tmp_path
    )
    assert missing.returncode == 2
    assert "deepfill-train: error: ckpt_path: no such file: /nowhere/last.ckpt" in missing.stderr
    typo = _cli("model.lrr=1", f"paths.log_dir={tmp_path}", cwd=tmp_path)
    assert typo.returncode != 0 and "model.lrr" in typo.stderr


@pytest.mark.parametrize(
    ("signal_name", "extra", "saved"),
    [
        ("SIGTERM", [], "stopping on SIGTERM: checkpoint saved to"),
        # The requeue signal SLURM sends before the time limit; no submitit handler here, so
        # the signal's default action (terminate) follows the checkpoint.
        ("SIGUSR2", ["callbacks.signal.requeue_signal=USR2"], "stopping on SIGUSR2: checkpoint saved to"),
    ],
)
def test_a_stop_signal_saves_a_checkpoint_and_stops(signal_name, extra, saved, tmp_path) -> None:
    import json
    import signal
    import time

    script = Path(sys.executable).parent / "deepfill-train"
    run = tmp_path / "run"
    args = [
        "experiment=quickstart",
        *[o for o in TINY if o != "logger=csv"],
        "logger=csv",
        "trainer.max_epochs=1000",
        "trainer.log_every_n_steps=1",
        "model.pretrain_coarse_steps=0",
        "model.reconstruction_steps=0",
        "data.train.length=8",
        "data.val.length=2",
        *extra,
        f"hydra.run.dir={run}",
        f"paths.log_dir={tmp_path}",
    ]
    process = subprocess.Popen(
        [str(script), *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    metrics = run / "csv" / "metrics.csv"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if metrics.is_file() and "train/d_loss" in metrics.read_text():
            break  # training is under way
        time.sleep(0.5)
    process.send_signal(getattr(signal, signal_name))
    output, _ = process.communicate(timeout=240)
    assert saved in output, output[-3000:]
    assert process.returncode != 0
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert int(checkpoint["state_dict"]["critic_steps"]) > 0
    assert checkpoint["epoch"] < 999  # it stopped long before the end
    # Recorded as stopped (resumable), not failed.
    assert json.loads((run / "job.json").read_text())["status"] == "stopped"


@pytest.mark.parametrize(
    ("asked", "native", "expected"),
    [
        ("auto", True, "bf16-mixed"),
        ("auto", False, "32-true"),
        ("bf16-mixed", True, "bf16-mixed"),
        ("bf16-mixed", False, "32-true"),  # V100/T4: emulated bf16 is not taken
        ("32-true", True, "32-true"),
    ],
)
def test_bf16_only_on_gpus_that_have_it_natively(monkeypatch, asked, native, expected) -> None:
    from omegaconf import OmegaConf

    from deepfill.training import trainer as setup

    calls = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        calls.append(including_emulation)
        return native or including_emulation  # emulation is always "supported"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    cfg = OmegaConf.create({"trainer": {"accelerator": "gpu", "precision": asked}})
    message = setup.resolve_precision(cfg.trainer)
    assert cfg.trainer.precision == expected
    assert calls and not any(calls)  # asked without emulation
    assert (message is not None) == (asked.startswith("bf16") and not native)
    if message is not None:
        assert "no native bf16" in message


@pytest.mark.parametrize(
    ("asked", "flags", "expected"),
    [
        ("bf16-mixed", "fpu avx512f avx512_bf16", "bf16-mixed"),
        ("bf16-mixed", "fpu avx512f amx_tile amx_bf16", "bf16-mixed"),
        ("bf16-mixed", "fpu avx2 avx512f", "32-true"),  # emulated: slower than float32
        ("auto", "fpu avx512f amx_bf16", "32-true"),  # bf16 on a CPU is opt-in
        ("32-true", "fpu amx_bf16", "32-true"),
    ],
)
def test_bf16_on_cpus_only_with_avx512_bf16_or_amx(monkeypatch, asked, flags, expected) -> None:
    from omegaconf import OmegaConf

    from deepfill.training import trainer as setup
    from deepfill.utils import cpu

    cpuinfo = f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(setup, "cpu_native_bf16", lambda: cpu.cpu_native_bf16(cpuinfo))
    cfg = OmegaConf.create({"trainer": {"accelerator": "cpu", "precision": asked}})
    message = setup.resolve_precision(cfg.trainer)
    assert cfg.trainer.precision == expected
    assert (message is not None) == (asked.startswith("bf16") and expected == "32-true")
    if message is not None:
        assert "no AVX512-BF16 or AMX" in message


def test_the_cpu_bf16_preset_composes_to_bf16_mixed_on_the_cpu(tmp_path) -> None:
    cfg = compose_cfg(["trainer=cpu_bf16"], tmp_path)
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.precision == "bf16-mixed"


def test_trainer_cpu_bf16_trains_in_bf16_mixed(monkeypatch, tmp_path) -> None:
    from deepfill.training import trainer as setup

    monkeypatch.setattr(setup, "cpu_native_bf16", lambda: True)  # as on an AMX CPU
    cfg = compose_cfg(["debug=fast_dev_run", *TINY, "trainer=cpu_bf16"], tmp_path)
    metrics = train(cfg)
    assert cfg.trainer.precision == "bf16-mixed"
    assert np.isfinite(metrics["train/g_loss"]) and np.isfinite(metrics["train/d_loss"])


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        (["trainer=ddp_cpu"], True),
        (["trainer=ddp"], True),
        (["trainer=ddp_cpu", "launcher=submitit_local"], True),
        (["launcher=slurm"], False),  # SLURM starts one task per rank itself
        (["trainer=cpu"], False),
    ],
)
def test_multirun_with_ddp_needs_slurm(overrides, refused, tmp_path) -> None:
    from omegaconf import OmegaConf

    from deepfill.sweeps.multirun import check_multirun_ddp as _check_multirun_ddp

    cfg = compose_cfg(overrides, tmp_path)
    OmegaConf.set_readonly(cfg.hydra, False)
    with open_dict(cfg):
        cfg.hydra.mode = "MULTIRUN"
    HydraConfig.instance().set_config(cfg)
    if refused:
        with pytest.raises(ConfigError, match=r"in a multirun \(-m\) needs launcher=slurm"):
            _check_multirun_ddp(cfg)
    else:
        _check_multirun_ddp(cfg)
    OmegaConf.set_readonly(cfg.hydra, False)
    with open_dict(cfg):
        cfg.hydra.mode = "RUN"
    HydraConfig.instance().set_config(cfg)
    _check_multirun_ddp(cfg)  # a single run may use DDP with any launcher
