"""Generator and critics: official parity (npz and TF checkpoint), shapes, gradients, bad input."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import deepfill
from deepfill import GlobalCritic, InpaintGenerator, LocalCritic, load_official_v1
from deepfill.cli.convert import main as convert_main
from deepfill.models import inpaint_padded
from deepfill.models.layers import (
    elu,
    elu_,
    pad_zeros,
    resize_nearest,
    tf_same_padding,
    upsample_conv3x3,
)
from deepfill.official.convert import load_official_critics, tf_variable_names
from deepfill.official.tf_checkpoint import CheckpointError, read_tf_checkpoint
from helpers.run_if import RunIf


def nchw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float()


@pytest.fixture(scope="module")
def golden(goldens):
    data = np.load(goldens / "gen_256.npz")
    return {k: data[k] for k in data.files}


def _check_parity(generator, golden) -> None:
    # Goldens are BGR; the loaded generator takes RGB: flip channels in and out.
    image, mask = nchw(golden["image"]).flip(1), nchw(golden["mask"])
    with torch.no_grad():
        x1, x2, offsets = generator(image, mask)
    assert (x1.flip(1) - nchw(golden["x_stage1"])).abs().max().item() < 1e-3
    assert (x2.flip(1) - nchw(golden["x_stage2"])).abs().max().item() < 1e-3
    flow = deepfill.flow_to_image(offsets, scale=2)
    assert ((flow - nchw(golden["flow"])).abs().amax(1) < 1e-6).float().mean().item() >= 0.99


def test_parity_loaded_from_npz(goldens, golden) -> None:
    _check_parity(load_official_v1(goldens / "gen_256.npz"), golden)


def test_parity_loaded_from_tf_checkpoint_folder_and_prefix(goldens, golden) -> None:
    _check_parity(load_official_v1(goldens), golden)
    _check_parity(load_official_v1(goldens / "gen_256.ckpt", backend="python"), golden)


def test_builtin_reader_equals_npz_weights(goldens, golden) -> None:
    variables = read_tf_checkpoint(goldens)
    assert len(variables) == 84
    for name, array in variables.items():
        assert np.array_equal(array, golden[f"w:{name}:0"]), name


@pytest.mark.tf
@RunIf(tensorflow=True)
def test_builtin_reader_equals_tensorflow_reader(goldens) -> None:
    ours = read_tf_checkpoint(goldens, backend="python")
    theirs = read_tf_checkpoint(goldens, backend="tensorflow")
    assert set(ours) == set(theirs)
    for name in ours:
        assert np.array_equal(ours[name], theirs[name]), name


def test_bgr_mode_reproduces_official_convention(goldens, golden) -> None:
    generator = load_official_v1(goldens / "gen_256.npz", bgr_to_rgb=False)
    with torch.no_grad():
        _, x2, _ = generator(nchw(golden["image"]), nchw(golden["mask"]))
    assert (x2 - nchw(golden["x_stage2"])).abs().max().item() < 1e-3


def test_parameter_count_and_official_names() -> None:
    generator = InpaintGenerator()
    assert sum(p.numel() for p in generator.parameters()) == 3_601_542
    names = tf_variable_names(generator)
    assert names["coarse.conv1.weight"] == "inpaint_net/conv1/kernel"
    assert (
        names["refine.allconv13_upsample.conv.bias"]
        == "inpaint_net/allconv13_upsample/allconv13_upsample_conv/bias"
    )
    assert names["refine.pmconv10.weight"] == "inpaint_net/pmconv10/kernel"
    assert len(names) == 84


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 64, 64), (2, 72, 40), (3, 48, 104)])
def test_shapes_for_any_size_divisible_by_8(batch, height, width) -> None:
    generator = InpaintGenerator(cnum=8)
    image = torch.rand(batch, 3, height, width) * 2 - 1
    mask = torch.zeros(batch, 1, height, width)
    mask[..., height // 4 : height // 2, width // 4 : width // 2] = 1
    with torch.no_grad():
        x1, x2, offsets = generator(image, mask)
    assert x1.shape == x2.shape == image.shape
    assert offsets.shape == (batch, 2, height // 8, width // 8)
    assert x2.abs().max() <= 1


def test_batch_of_per_sample_masks_equals_each_sample_alone() -> None:
    generator = InpaintGenerator(cnum=8).eval()
    image = torch.rand(3, 3, 64, 48) * 2 - 1
    mask = torch.zeros(3, 1, 64, 48)
    for i in range(3):
        mask[i, :, 8 * i : 8 * i + 24, 4 + 8 * i : 28 + 8 * i] = 1
    with torch.no_grad():
        _, x2, _ = generator(image, mask)
        for i in range(3):
            _, x2_i, _ = generator(image[i : i + 1], mask[i : i + 1])
            torch.testing.assert_close(x2[i : i + 1], x2_i, atol=1e-5, rtol=1e-5)


def test_gradients_reach_every_generator_parameter() -> None:
    torch.manual_seed(0)
    generator = InpaintGenerator(cnum=8)
    image = torch.rand(2, 3, 64, 64) * 0.2 - 0.1  # small values: the clip stays inactive
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, 16:40, 20:44] = 1
    x1, x2, _ = generator(image, mask)
    (x1.square().mean() + x2.square().mean()).backward()
    missing = [n for n, p in generator.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_configurable_width_dilations_and_attention() -> None:
    generator = InpaintGenerator(
        cnum=16, dilations=(1, 2, 3), attention={"ksize": 5, "fuse": False, "rate": 1}
    )
    assert [n for n in generator.coarse.atrous_names] == ["conv7_atrous", "conv8_atrous", "conv9_atrous"]
    assert generator.refine.xconv9_atrous.dilation == (3, 3)
    assert generator.refine.attention.ksize == 5
    assert generator.refine.attention.rate == 1
    with torch.no_grad():
        _, _x2, offsets = generator(torch.zeros(1, 3, 32, 32), torch.zeros(1, 1, 32, 32))
    assert offsets.shape == (1, 2, 8, 8)  # rate 1: attention on the 1/4 grid


def test_without_contextual_attention_the_branch_passes_its_features_on() -> None:
    torch.manual_seed(0)
    with_ca = InpaintGenerator(cnum=8)
    without = InpaintGenerator(cnum=8, contextual_attention=False)
    without.load_state_dict(with_ca.state_dict())  # same parameters: only the layer differs
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    mask = torch.zeros(2, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    calls = []
    without.refine.attention.register_forward_hook(lambda *args: calls.append(1))
    _, x2, offsets = without(image, mask)
    _, x2_ca, offsets_ca = with_ca(image, mask)
    assert not calls and offsets.shape == offsets_ca.shape and not offsets.any()
    assert x2.shape == x2_ca.shape and not torch.allclose(x2, x2_ca)
    x2.square().mean().backward()
    assert without.refine.pmconv1.weight.grad.abs().sum() > 0
    assert without.config["contextual_attention"] is False


def test_inpaint_padded_handles_any_size_and_keeps_known_pixels() -> None:
    generator = InpaintGenerator(cnum=8).eval()
    image = torch.rand(1, 3, 37, 53) * 2 - 1
    mask = torch.zeros(1, 1, 37, 53)
    mask[..., 10:20, 15:30] = 1
    x1, x2, completed, offsets = inpaint_padded(generator, image, mask)
    assert offsets.shape == (1, 2, 40 // 8, 56 // 8)
    assert x1.shape == x2.shape == completed.shape == image.shape
    known = mask.expand_as(image) == 0
    assert torch.equal(completed[known], image[known])


@pytest.mark.parametrize(
    ("image_shape", "mask_shape", "message"),
    [
        ((1, 4, 64, 64), (1, 1, 64, 64), r"image must be \(N,3,H,W\)"),
        ((2, 3, 64, 64), (2, 3, 64, 64), r"mask must be \(1 or N,1,H,W\)"),
        ((1, 3, 64, 64), (1, 1, 32, 64), "does not match image size"),
        ((1, 3, 60, 64), (1, 1, 60, 64), "divisible by 8"),
    ],
)
def test_generator_bad_input(image_shape, mask_shape, message) -> None:
    generator = InpaintGenerator(cnum=8)
    with pytest.raises(ValueError, match=message) as info:
        generator(torch.zeros(image_shape), torch.zeros(mask_shape))
    assert "\n" not in str(info.value)


def test_generator_rejects_non_binary_mask() -> None:
    with pytest.raises(ValueError, match="binary"):
        InpaintGenerator(cnum=8)(torch.zeros(1, 3, 32, 32), torch.full((1, 1, 32, 32), 0.3))


def test_critics_shapes_and_official_widths() -> None:
    global_critic, local_critic = GlobalCritic(256), LocalCritic(128)
    assert [c.out_channels for c in global_critic.convs] == [64, 128, 256, 256]
    assert [c.out_channels for c in local_critic.convs] == [64, 128, 256, 512]
    assert global_critic.dense.in_features == 256 * 16 * 16
    assert local_critic.dense.in_features == 512 * 8 * 8
    assert global_critic(torch.zeros(2, 3, 256, 256)).shape == (2,)
    assert LocalCritic(64)(torch.zeros(3, 3, 64, 64)).shape == (3,)
    with pytest.raises(ValueError, match=r"expects \(N,C,128,128\)"):
        local_critic(torch.zeros(1, 3, 64, 64))


def test_critics_use_leaky_relu_0_2_and_a_dense_head_on_the_flattened_features() -> None:
    critic = LocalCritic(16, cnum=4)
    x = torch.randn(2, 3, 16, 16)
    h = x
    for conv in critic.convs:
        top, bottom = tf_same_padding(h.shape[-2], 5, 2)
        left, right = tf_same_padding(h.shape[-1], 5, 2)
        h = F.conv2d(F.pad(h, (left, right, top, bottom)), conv.weight, conv.bias, stride=2)
        h = torch.where(h > 0, h, 0.2 * h)
    expected = h.flatten(1) @ critic.dense.weight.T + critic.dense.bias
    assert torch.allclose(critic(x), expected.squeeze(1), atol=1e-5)


@pytest.mark.parametrize(
    "network",
    [lambda init: InpaintGenerator(cnum=16, init=init), lambda init: GlobalCritic(64, 16, init=init)],
)
def test_official_init_is_glorot_uniform_with_zero_biases(network) -> None:
    torch.manual_seed(0)
    official, default = network("glorot_uniform"), network("pytorch")
    layers = [m for m in official.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert layers
    for layer in layers:
        fan_in = layer.weight[0].numel()
        fan_out = layer.weight.shape[0] * layer.weight[0, 0].numel()
        limit = math.sqrt(6 / (fan_in + fan_out))
        assert layer.weight.abs().max() <= limit
        if layer.weight.numel() > 2000:  # enough samples to see the spread: uniform std = limit/sqrt(3)
            assert layer.weight.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.1)
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    biases = [m.bias for m in default.modules() if isinstance(m, torch.nn.Conv2d)]
    assert any(b.abs().sum() > 0 for b in biases)  # PyTorch's defaults stay available
    with pytest.raises(ValueError, match="init must be"):
        network("he")


def test_official_critics_load_from_official_variable_names(goldens) -> None:
    step = np.load(goldens / "train_step_256.npz")
    global_critic, local_critic = load_official_critics(goldens / "train_step_256.npz", bgr_to_rgb=False)
    kernel = step["w:discriminator/discriminator_local/conv1/kernel:0"]
    assert np.array_equal(local_critic.convs[0].weight.detach().numpy(), kernel.transpose(3, 2, 0, 1))
    # The dense kernel reads NHWC-flattened features: row (h, w, c) is our column (c, h, w).
    dense = step["w:discriminator/dout_global_fc/kernel:0"][:, 0].reshape(16, 16, 256)
    ours = global_critic.dense.weight.detach().numpy().reshape(256, 16, 16)
    assert np.array_equal(ours, dense.transpose(2, 0, 1))
    rgb_global, _ = load_official_critics(goldens / "train_step_256.npz")
    assert torch.equal(rgb_global.convs[0].weight, global_critic.convs[0].weight.flip(1))
    with pytest.raises(ValueError, match=r"missing 10 official variable\(s\): discriminator/"):
        load_official_critics(goldens / "gen_256.npz")


def test_missing_variables_and_shape_mismatches_are_listed(tmp_path, golden) -> None:
    weights = {k: v for k, v in golden.items() if k.startswith("w:")}
    del weights["w:inpaint_net/conv5/bias:0"]
    del weights["w:inpaint_net/pmconv9/kernel:0"]
    np.savez(tmp_path / "missing.npz", **weights)
    with pytest.raises(ValueError, match=r"missing 2 .*conv5/bias.*pmconv9/kernel"):
        load_official_v1(tmp_path / "missing.npz")
    weights = {k: v for k, v in golden.items() if k.startswith("w:")}
    weights["w:inpaint_net/conv3/kernel:0"] = np.zeros((3, 3, 64, 32), np.float32)
    np.savez(tmp_path / "bad.npz", **weights)
    with pytest.raises(
        ValueError, match=r"1 shape mismatch.*conv3/kernel \(32, 64, 3, 3\) != \(64, 64, 3, 3\)"
    ):
        load_official_v1(tmp_path / "bad.npz")


def test_paths_that_are_not_checkpoints(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not a TensorFlow checkpoint folder"):
        load_official_v1(tmp_path)
    (tmp_path / "junk.index").write_bytes(b"not an sstable at all" * 4)
    with pytest.raises(CheckpointError, match="bad SSTable magic"):
        read_tf_checkpoint(tmp_path / "junk", backend="python")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_official_v1(tmp_path / "nothing" / "snap-0")


def test_convert_cli_writes_loadable_rgb_weights(goldens, golden, tmp_path, capsys) -> None:
    out = tmp_path / "official" / "v1.pt"
    assert convert_main([str(goldens), str(out)]) == 0
    assert "3,601,542 parameters" in capsys.readouterr().out
    _check_parity(load_official_v1(out), golden)
    with pytest.raises(SystemExit) as info:
        convert_main([str(tmp_path / "nope"), str(tmp_path / "x.pt")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("deepfill-convert: error:")
    assert "\n" not in err


def test_convert_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "deepfill-convert"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert "deepfill-convert" in result.stdout


@pytest.mark.parametrize("grad", [False, True])
def test_bf16_autocast_path_stays_close_to_float32(grad) -> None:
    # The mixed-precision path of training and inference on GPUs, exercised with CPU autocast.
    torch.manual_seed(0)
    generator = InpaintGenerator(cnum=8)
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    mask = torch.zeros(2, 1, 64, 64)
    mask[0, :, 8:40, 8:40] = 1
    mask[1, :, 24:56, 16:48] = 1
    with torch.set_grad_enabled(grad):
        _, reference, _ = generator(image, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x1, x2, _ = generator(image, mask)
        if grad:
            x2.float().square().mean().backward()
    assert torch.isfinite(x1.float()).all() and torch.isfinite(x2.float()).all()
    assert (x2.float() - reference).abs().mean() < 0.05
    if grad:
        missing = [name for name, p in generator.named_parameters() if p.grad is None]
        assert missing == []  # both stages are reached (stage 1 through the pasted coarse result)
        assert all(torch.isfinite(p.grad).all() for p in generator.parameters())


def test_channels_last_layout_gives_the_nchw_results() -> None:
    """The default NHWC layout (faster) computes the same function as plain NCHW."""
    torch.manual_seed(0)
    nchw = InpaintGenerator(cnum=8, channels_last=False)
    nhwc = InpaintGenerator(cnum=8)
    nhwc.load_state_dict(nchw.state_dict())
    assert nhwc.coarse.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert nchw.coarse.conv1.weight.is_contiguous()
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, 16:48, 20:44] = 1
    (a1, a2, a_off), (b1, b2, b_off) = nchw(image, mask), nhwc(image, mask)
    torch.testing.assert_close(b1, a1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b2, a2, rtol=1e-5, atol=1e-5)
    assert torch.equal(a_off, b_off)
    (a2.square().mean()).backward()
    (b2.square().mean()).backward()
    grads = nhwc.refine.xconv1.weight.grad, nchw.refine.xconv1.weight.grad
    torch.testing.assert_close(*grads, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_training_elu_matches_torch_values_gradients_and_second_derivatives(layout) -> None:
    """The training ELU (in place, differentiated from its output) equals F.elu, also across
    the chunk boundaries of its cache-sized pieces and for values far below zero."""
    torch.manual_seed(0)
    x = (torch.randn(2, 8, 200, 200) * 4).to(memory_format=layout)  # 640k values: 3 pieces
    x[0, 0, 0, :4] = torch.tensor([-200.0, -1e-8, 0.0, 1e-8])
    reference_input = x.clone().requires_grad_(True)
    ours_input = x.clone().requires_grad_(True)
    upstream = torch.randn_like(x)
    expected = F.elu(reference_input * 1.0)  # `* 1.0`: a fresh tensor, like a convolution's output
    got = elu(ours_input * 1.0)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert got.is_contiguous(memory_format=layout)
    (expected * upstream).sum().backward()
    (got * upstream).sum().backward()
    torch.testing.assert_close(ours_input.grad, reference_input.grad, rtol=1e-6, atol=1e-6)
    # A second derivative (as a gradient penalty through the generator would take) still works.
    small = torch.randn(3, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: elu(t * 1.0), (small,))
    assert torch.autograd.gradgradcheck(lambda t: elu(t * 1.0), (small,))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last, "strided"])
def test_inference_elu_equals_torch_elu_across_pieces_and_special_values(layout) -> None:
    """In-place inference ELU: same values as F.elu over several cache-sized pieces (the last
    one partial), for +-inf, NaN and values near zero, and for a strided view (plain F.elu)."""
    torch.manual_seed(0)
    x = torch.randn(1, 9, 190, 200) * 5  # 342k values: two pieces, the second partial
    x[0, 0, 0, :7] = torch.tensor([-float("inf"), float("inf"), float("nan"), -1e-7, 0.0, 1e-7, -90.0])
    x = x[:, :, :, ::2] if layout == "strided" else x.to(memory_format=layout)
    expected = F.elu(x)
    got = elu_(x)
    assert got is x
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_upsampling_convolution_by_phases_equals_upsample_then_convolve(layout) -> None:
    """The x2 upsampling layers compute four 2x2 convolutions of the small input: the same
    values and first and second derivatives as resizing then convolving with the 3x3 kernel."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 7, 9, dtype=torch.float64).to(memory_format=layout).requires_grad_(True)
    weight = torch.randn(5, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    expected = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)
    got = upsample_conv3x3(x, weight, bias)
    assert got.shape == (2, 5, 14, 18) and got.is_contiguous(memory_format=layout)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(expected)
    for a, b in zip(
        torch.autograd.grad(expected, (x, weight, bias), upstream),
        torch.autograd.grad(got, (x, weight, bias), upstream),
        strict=True,
    ):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    small = (x[:1, :2, :3, :4].detach().requires_grad_(True), weight[:2, :2].detach().requires_grad_(True))
    assert torch.autograd.gradgradcheck(lambda t, k: upsample_conv3x3(t, k, None), small)


def test_upsampling_layers_equal_the_official_resize_then_convolution(monkeypatch) -> None:
    """Each generator upsampling layer equals TF's align-corners x2 resize then its 3x3 'SAME'
    convolution and ELU, computed plainly; so does its fallback for sizes where TF's resize is
    not a pixel repeat."""
    import deepfill.models.generator as generator_module

    torch.manual_seed(0)
    generator = InpaintGenerator(cnum=8).double()
    layer = generator.refine.allconv13_upsample
    x = torch.randn(1, 32, 10, 12, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    plain = F.elu(F.conv2d(resize_nearest(x, (20, 24)), layer.conv.weight, layer.conv.bias, padding=1))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), plain, rtol=1e-12, atol=1e-12)
        monkeypatch.setattr(generator_module, "resize_is_repeat", lambda size, out_size: False)
        torch.testing.assert_close(layer(x), plain, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_inference_padding_equals_torch_pad(layout) -> None:
    x = torch.randn(2, 3, 5, 6).to(memory_format=layout)
    for pad in [(0, 1, 0, 1), (2, 0, 1, 3), (0, 0, 0, 0)]:
        got = pad_zeros(x, pad)
        assert torch.equal(got, F.pad(x, pad)) and got.is_contiguous(memory_format=layout)
    x.requires_grad_(True)
    pad_zeros(x, (0, 1, 0, 1)).sum().backward()  # with autograd it is F.pad itself
    assert torch.equal(x.grad, torch.ones_like(x))


def test_training_after_inference_in_one_process() -> None:
    """Inpaint under inference_mode, then train at the same size (a notebook, a fine-tuning
    script): nothing the first forward cached may be an inference tensor."""
    from deepfill.models import layers

    layers._device_index.cache_clear()
    generator = deepfill.InpaintGenerator(cnum=4)
    image, mask = torch.rand(2, 3, 40, 56) * 2 - 1, torch.zeros(2, 1, 40, 56)
    mask[..., 8:24, 16:40] = 1
    with torch.inference_mode():
        generator(image, mask)
    _, x2, _ = generator.train()(image, mask)
    x2.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in generator.parameters())
