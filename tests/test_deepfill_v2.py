"""DeepFill v2 (gated convolution, SN-PatchGAN) against the official v2 graph: the generator
golden (``gen_v2_256.npz`` and its TF checkpoint folder) and one training step
(``train_step_v2_256.npz``). Every input (batch, size, mask, weights, ``u``) comes from the files,
so any golden of these formats is checked: set ``DEEPFILL_GOLDENS_V2`` to its folder.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import deepfill
from deepfill.cli.convert import main as convert_main
from deepfill.inference import load_generator
from deepfill.models import InpaintGenerator, SNPatchGANCritic
from deepfill.models.generator import GenConv
from deepfill.models.sn_patchgan import SpectralNormConv2d, spectral_norm_power_iteration
from deepfill.official.convert import (
    load_official,
    load_official_v1,
    load_official_v2,
    sn_patchgan_variable_names,
    tf_variable_names,
)
from deepfill.official.goldens import (
    GENERATOR_GOLDEN_V2,
    TRAINING_STEP_GOLDEN_V2,
    generator_case,
    training_step_case_v2,
)
from deepfill.selftest import training_step_losses_v2
from deepfill.training.losses import hinge_critic_loss, hinge_generator_loss
from deepfill.utils.errors import UserError


def _check_parity(generator: InpaintGenerator, case: dict) -> None:
    with torch.no_grad():
        x1, x2, offsets = generator(case["image"], case["mask"])
    assert (x1 - case["x_stage1"]).abs().max().item() < 1e-3
    assert (x2 - case["x_stage2"]).abs().max().item() < 1e-3
    flow = deepfill.flow_to_image(offsets, scale=2, bilinear=True)  # v2 draws it bilinear
    assert ((flow - case["flow"]).abs().amax(1) < 1e-6).float().mean().item() >= 0.99


@pytest.fixture(scope="module")
def case(goldens_v2) -> dict:
    return generator_case(goldens_v2, "v2")


def test_generator_matches_the_official_v2_graph(case) -> None:
    generator = case["generator"]
    assert generator.family == "v2" and generator.gated
    _check_parity(generator, case)


def test_tf_checkpoint_folder_and_prefix_load_as_v2(goldens_v2, case) -> None:
    _check_parity(load_official(goldens_v2), case)
    _check_parity(load_official_v2(goldens_v2 / "gen_v2_256.ckpt", backend="python"), case)


def test_public_loader_recognises_v2_in_every_format(goldens_v2, case, tmp_path, capsys) -> None:
    out = tmp_path / "v2.pt"
    assert convert_main([str(goldens_v2), str(out)]) == 0
    assert "DeepFill v2, 4,052,478 parameters" in capsys.readouterr().out
    for weights in (goldens_v2 / GENERATOR_GOLDEN_V2, goldens_v2, out):
        generator = load_generator(weights)
        assert generator.family == "v2", weights
        _check_parity(generator, case)


def test_bgr_mode_reproduces_the_official_convention(goldens_v2, case) -> None:
    generator = load_official_v2(goldens_v2 / GENERATOR_GOLDEN_V2, bgr_to_rgb=False)
    with torch.no_grad():
        _, x2, _ = generator(case["image"].flip(1), case["mask"])
    assert (x2.flip(1) - case["x_stage2"]).abs().max().item() < 1e-3


def test_weights_of_one_family_given_to_the_other_say_which_they_hold(goldens, goldens_v2) -> None:
    with pytest.raises(UserError, match=r"holds DeepFill v2, gated convolution weights, not v1") as info:
        load_official_v1(goldens_v2 / GENERATOR_GOLDEN_V2)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=r"holds DeepFill v1, contextual attention weights, not v2"):
        load_official_v2(goldens / "gen_256.npz")
    assert load_official(goldens / "gen_256.npz").family == "v1"


def test_parameter_count_and_official_names(goldens_v2) -> None:
    generator = InpaintGenerator(cnum=48, gated=True)
    assert sum(p.numel() for p in generator.parameters()) == 4_052_478
    with np.load(goldens_v2 / GENERATOR_GOLDEN_V2) as data:
        official = {k[2:-2]: data[k].shape for k in data.files if k.startswith("w:")}
    names = tf_variable_names(generator)
    assert set(names.values()) == set(official)
    for name, parameter in generator.named_parameters():
        shape = official[names[name]]
        expected = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape
        assert tuple(parameter.shape) == expected, name


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("activation", ["elu", "relu"])
def test_gated_convolution_is_activation_times_sigmoid_gate(activation, layout) -> None:
    torch.manual_seed(0)
    layer = GenConv(6, 5, 3, activation=activation, gated=True).to(memory_format=layout)
    assert layer.out_channels == 10
    x = (torch.randn(2, 6, 9, 11) * 3).contiguous(memory_format=layout)
    act = F.elu if activation == "elu" else F.relu

    def plain(inputs):
        raw = F.conv2d(inputs, layer.weight, layer.bias, padding=1)
        return act(raw[:, :5]) * torch.sigmoid(raw[:, 5:])

    expected = plain(x.clone().requires_grad_())
    trained = layer(x.clone().requires_grad_())
    with torch.no_grad():
        inferred = layer(x)  # the in-place path
    torch.testing.assert_close(trained, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(inferred, expected, atol=1e-6, rtol=1e-5)
    # Gradients of the weights and the input equal the plain formula's.
    upstream = torch.randn_like(expected)
    inputs = x.clone().requires_grad_()
    ours = torch.autograd.grad((layer(inputs) * upstream).sum(), [inputs, layer.weight, layer.bias])
    inputs = x.clone().requires_grad_()
    theirs = torch.autograd.grad((plain(inputs) * upstream).sum(), [inputs, layer.weight, layer.bias])
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not GenConv(6, 3, 3, activation=None, gated=True).gated  # output layers are plain


def test_v2_generator_any_size_tanh_range_and_gradients_everywhere() -> None:
    torch.manual_seed(0)
    generator = InpaintGenerator(cnum=8, gated=True, channels_last=False)
    image = torch.rand(2, 3, 40, 56) * 2 - 1
    mask = torch.zeros(2, 1, 40, 56)
    mask[:, :, 8:24, 16:40] = 1
    x1, x2, offsets = generator(image, mask)
    assert x1.shape == x2.shape == image.shape and offsets.shape == (2, 2, 5, 7)
    assert x1.abs().max() < 1 and x2.abs().max() < 1
    (x1.mean() + x2.mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in generator.parameters())
    with pytest.raises(ValueError, match="multiple of 4"):
        InpaintGenerator(cnum=6, gated=True)


def test_spectral_norm_converges_to_the_largest_singular_value() -> None:
    torch.manual_seed(0)
    weight = torch.randn(16, 8, 5, 5)
    sigma_max = torch.linalg.matrix_norm(weight.flatten(1), ord=2)
    u = torch.randn(1, 16)
    for _ in range(200):
        sigma, u = spectral_norm_power_iteration(weight, u)
    assert abs(float(sigma) - float(sigma_max)) < 1e-4 * float(sigma_max)
    conv = SpectralNormConv2d(8, 16)
    before = conv.u.clone()
    conv.eval()(torch.randn(1, 8, 12, 12))
    assert torch.equal(conv.u, before)  # eval mode reads u
    conv.train()(torch.randn(1, 8, 12, 12))
    assert not torch.equal(conv.u, before)  # training advances it


def test_sn_patchgan_scores_every_patch_at_any_size() -> None:
    critic = SNPatchGANCritic(input_size=128)
    scores = critic(torch.rand(3, 3, 128, 96) * 2 - 1, torch.zeros(1, 1, 128, 96))
    assert scores.shape == (3, 256 * 2 * 2)
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert float(hinge_critic_loss(real, fake)) == pytest.approx(0.5 * 0.25 + 0.5 * 0.5)
    assert float(hinge_generator_loss(fake)) == pytest.approx(1.0)


# ---------------------------------------------------------------------- one training step
@pytest.fixture(scope="module")
def step(goldens_v2) -> dict:
    path = goldens_v2 / TRAINING_STEP_GOLDEN_V2
    if not path.is_file():
        pytest.fail(f"{path} not found; set DEEPFILL_GOLDENS_V2 to the official_v2 folder")
    case = training_step_case_v2(goldens_v2)
    kinks = _kink_channels(case)  # with the spectral norms' u before the step
    g, d = training_step_losses_v2(case)
    generator_grads = torch.autograd.grad(g.total, list(case.generator.parameters()))
    critic_grads = torch.autograd.grad(d.total, list(case.critic.parameters()))
    return {"case": case, "g": g, "d": d, "grad_g": generator_grads, "grad_d": critic_grads, "kinks": kinks}


def test_mask_is_the_union_of_box_and_strokes(step) -> None:
    golden = step["case"].golden
    union = np.maximum(golden["box_mask"], golden["brush_mask"])
    assert np.array_equal(golden["mask"], union)
    assert torch.equal(step["case"].mask, torch.from_numpy(union).permute(0, 3, 1, 2))


@pytest.mark.parametrize(
    ("key", "part"),
    [
        ("ae_loss", lambda s: s["g"]["l1"]),
        ("g_loss", lambda s: s["g"].total),
        ("d_loss", lambda s: s["d"].total),
    ],
)
def test_losses_match_the_official_graph(step, key, part) -> None:
    theirs = float(step["case"].golden[f"loss:{key}"])
    ours = float(part(step).detach())
    assert abs(ours - theirs) <= 1e-6 * abs(theirs), (key, ours, theirs)


def test_spectral_norm_u_after_the_step_equals_the_official(step) -> None:
    case = step["case"]
    names = sn_patchgan_variable_names(case.critic)
    state = case.critic.state_dict()
    checked = 0
    for name, tf_name in names.items():
        if name.endswith(".u"):
            after = case.golden[f"u_after:{tf_name}:0"]
            before = case.golden[f"w:{tf_name}:0"]
            assert not np.allclose(after, before)  # the step moved it
            np.testing.assert_allclose(state[name].numpy(), after, atol=1e-6)
            checked += 1
    assert checked == len(case.critic.convs)


def _tf_layout(grad: torch.Tensor) -> np.ndarray:
    array = grad.detach().numpy()
    return array.transpose(2, 3, 1, 0) if array.ndim == 4 else array  # OIHW -> HWIO


def test_generator_gradients_match_the_official_graph(step) -> None:
    case = step["case"]
    names = tf_variable_names(case.generator)
    ours = {
        names[name]: _tf_layout(grad)
        for (name, _), grad in zip(case.generator.named_parameters(), step["grad_g"], strict=True)
    }
    golden = {k[len("grad_g:") : -2]: v for k, v in case.golden.items() if k.startswith("grad_g:")}
    assert golden
    largest = max(np.abs(v).max() for v in golden.values())
    for tf_name, theirs in golden.items():
        error = np.abs(ours[tf_name] - theirs).max() / largest
        assert error < 1e-3, (tf_name, error)


def _kink_channels(case) -> dict[int, set[int]]:
    """Per critic layer, the output channels with a pre-activation within float32 rounding of
    the leaky ReLU's kink (|x| < 1e-6 of the layer's largest): there the slope (1 or 0.2) is a
    coin flip between any two float32 computations, and each flip changes that channel's kernel
    gradient by a few tenths of a percent of the largest gradient."""
    critic, image, mask = case.critic, case.image, case.mask
    with torch.no_grad():
        _, x2, _ = case.generator(image, mask)
        completed = x2 * mask + image * (1 - mask)
        masks = mask.expand(2 * image.shape[0], 1, *mask.shape[-2:])
        x = torch.cat([torch.cat([image, completed]), masks], 1)
        kinks = {}
        was_training = critic.training
        critic.eval()  # reads u without advancing it
        for index, conv in enumerate(critic.convs):
            pre = conv(x)
            near = pre.abs().amin(dim=(0, 2, 3)) < 1e-6 * pre.abs().amax()
            kinks[index] = set(near.nonzero().flatten().tolist())
            x = F.leaky_relu(pre, 0.2)
        critic.train(was_training)
    return kinks


def test_critic_gradients_match_the_official_graph(step) -> None:
    case = step["case"]
    names = sn_patchgan_variable_names(case.critic)
    ours = {
        names[name]: _tf_layout(grad)
        for (name, _), grad in zip(case.critic.named_parameters(), step["grad_d"], strict=True)
    }
    golden = {k[len("grad_d:") : -2]: v for k, v in case.golden.items() if k.startswith("grad_d:")}
    assert golden
    largest = max(np.abs(v).max() for v in golden.values())
    kinks = step["kinks"]
    compared = 0
    for tf_name, theirs in golden.items():
        layer = int(tf_name.split("/conv")[-1].split("/")[0]) - 1
        # Error per output channel (the last axis of kernels and biases).
        error = np.abs(ours[tf_name] - theirs).reshape(-1, theirs.shape[-1]).max(axis=0) / largest
        off = {int(c) for c in np.flatnonzero(error >= 1e-3)}
        # Only a channel at a kink may differ, and those are a few.
        assert off <= kinks[layer], (tf_name, sorted(off - kinks[layer]), float(error.max()))
        assert len(off) <= max(2, 0.02 * theirs.shape[-1]), (tf_name, sorted(off))
        compared += 1
    assert compared == len(golden)


# ---------------------------------------------------------------------- training and the commands
def _fit_v2(root, max_steps: int, ckpt_path=None):
    import pytorch_lightning as pl

    from helpers.tiny import make_data, make_module, make_trainer

    pl.seed_everything(0)
    module = make_module(size=32, cnum=8, family="v2", lpips=False, pretrain_coarse_steps=1)
    trainer = make_trainer(root, max_steps=max_steps, limit_val_batches=1, enable_checkpointing=False)
    trainer.fit(module, make_data(length=16, batch_size=4, size=32), ckpt_path=ckpt_path)
    return module, trainer


def test_v2_training_alternates_critic_and_generator_and_resumes_exactly(tmp_path) -> None:
    from deepfill.inference import generator_from_checkpoint

    straight, trainer = _fit_v2(tmp_path / "straight", 7)
    # 1 coarse update, then critic, generator, critic, generator, critic, generator.
    assert (int(straight.generator_steps), int(straight.critic_steps)) == (4, 3)
    logged = trainer.logged_metrics
    assert {"train/d_loss", "train/critic_gap", "train/g_adv", "train/l1"} <= set(logged)
    initial = SNPatchGANCritic(32, cnum=8)  # the same seed draws the same first u ...
    assert not torch.equal(straight.critic.convs[0].u, initial.convs[0].u)  # ... the steps moved it
    first, first_trainer = _fit_v2(tmp_path / "first", 4)
    first_trainer.save_checkpoint(tmp_path / "four.ckpt")
    resumed, _ = _fit_v2(tmp_path / "resumed", 7, ckpt_path=tmp_path / "four.ckpt")
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # weights, u and counters
    from deepfill.utils.checkpoints import check_resume_checkpoint
    from helpers.tiny import make_module

    with pytest.raises(
        UserError, match=r"holds a DeepFill v2 training checkpoint, and this run trains DeepFill v1"
    ):
        check_resume_checkpoint(make_module(size=32, cnum=8), tmp_path / "four.ckpt")
    generator = generator_from_checkpoint(tmp_path / "four.ckpt")
    assert generator.family == "v2" and torch.equal(
        generator.refine.xconv1.weight, first.generator.refine.xconv1.weight
    )


def test_the_module_takes_one_kind_of_critics() -> None:
    from deepfill.models import GlobalCritic, LocalCritic
    from deepfill.training.module import DeepFillModule

    generator = InpaintGenerator(cnum=8, gated=True)
    with pytest.raises(
        ValueError, match=r"either model.global_critic and model.local_critic .* or model.critic"
    ):
        DeepFillModule(generator, GlobalCritic(32), LocalCritic(16), critic=SNPatchGANCritic(32))
    with pytest.raises(ValueError, match="not both or neither"):
        DeepFillModule(generator)


def test_the_official_v2_weights_export_to_onnx_and_reproduce_the_official_graph(case, tmp_path) -> None:
    pytest.importorskip("onnxruntime", reason="the onnx extra is installed by `make install`")
    from deepfill.deploy import OnnxGenerator, export_onnx

    path = export_onnx(case["generator"], tmp_path / "v2.onnx", check_size=(64, 96)).path
    onnx_generator = load_generator(path)
    assert isinstance(onnx_generator, OnnxGenerator) and onnx_generator.family == "v2"
    x_stage1, x_stage2, _ = onnx_generator(case["image"], case["mask"])
    assert (x_stage1 - case["x_stage1"]).abs().max().item() < 1e-3
    assert (x_stage2 - case["x_stage2"]).abs().max().item() < 1e-3
    with torch.no_grad():
        _, expected, _ = case["generator"](case["image"], case["mask"])
    assert (x_stage2 - expected).abs().max().item() < 1e-4


def test_eval_and_inpaint_commands_take_v2_weights(goldens_v2, tmp_path) -> None:
    from PIL import Image

    from helpers.commands import call_cli

    weights = goldens_v2 / GENERATOR_GOLDEN_V2
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (72, 90, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    hole = np.zeros((72, 90), np.uint8)
    hole[20:50, 30:70] = 255
    Image.fromarray(hole).save(tmp_path / "mask.png")
    args = [f"weights={weights}", f"input={tmp_path}/photo.png", f"mask_path={tmp_path}/mask.png"]
    result = call_cli(
        "deepfill-inpaint", *args, f"output={tmp_path}/out.png", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    filled = np.asarray(Image.open(tmp_path / "out.png"))
    photo = np.asarray(Image.open(tmp_path / "photo.png"))
    assert filled.shape == photo.shape and np.array_equal(filled[hole == 0], photo[hole == 0])
    result = call_cli(
        "deepfill-eval",
        f"weights={weights}",
        "data.image_size=64",
        "limit=2",
        "baselines=[mean_fill]",
        "lpips=false",
        f"hydra.run.dir={tmp_path}/eval",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "deepfill" in result.stdout and "mean_fill" in result.stdout
    # The demo offers the weights and names the family beside the result.
    from deepfill.demo import Demo, find_weights

    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "v2.npz").symlink_to(weights)
    assert any(option.path.name == "v2.npz" for option in find_weights([tmp_path / "weights"]))
    demo = Demo([tmp_path / "weights"], tmp_path / "weights" / "v2.npz", "cpu")
    filled, _, painted = demo.inpaint({"background": photo, "layers": []}, None, "preset", "box", 0)
    assert filled.family == "v2" and np.array_equal(filled.completed[~painted], photo[~painted])
