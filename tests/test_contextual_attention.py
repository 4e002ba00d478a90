"""Contextual attention: parity with the official graph, properties, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepfill import ContextualAttention, flow_to_image
from deepfill.models.layers import align_corners_index
from helpers.reference import contextual_attention_loop

CASES = ["ca_64x64_rate2_fuse", "ca_64x64_rate2_self", "ca_48x80_rate1_nofuse"]


def nchw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float()


def load_case(goldens, name):
    data = np.load(goldens / f"{name}.npz")
    return {k: data[k] for k in data.files}


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("chunk_size", [None, 37])
def test_parity_with_official_graph(goldens, name, chunk_size) -> None:
    case = load_case(goldens, name)
    f, b, mask = nchw(case["f"]), nchw(case["b"]), nchw(case["mask"])
    rate, fuse = int(case["rate"]), bool(case["fuse"])
    layer = ContextualAttention(ksize=3, stride=1, rate=rate, fuse_k=3, softmax_scale=10.0, fuse=fuse)
    layer.chunk_size = chunk_size
    with torch.no_grad():
        y, offsets = layer(f, b, mask)
    assert (y - nchw(case["y"])).abs().max().item() < 1e-4
    flow = flow_to_image(offsets, scale=rate)
    same = (flow - nchw(case["flow"])).abs().amax(dim=1) < 1e-6
    assert same.float().mean().item() >= 0.99


@pytest.mark.parametrize("name", CASES)
def test_reference_loop_matches_official_graph(goldens, name) -> None:
    case = load_case(goldens, name)
    y, _ = contextual_attention_loop(
        nchw(case["f"]), nchw(case["b"]), nchw(case["mask"]), rate=int(case["rate"]), fuse=bool(case["fuse"])
    )
    assert (y - nchw(case["y"])).abs().max().item() < 1e-4


def test_align_corners_index_rounds_half_away_in_float32() -> None:
    # 3 -> 5: exact halves at 0.5 and 1.5 round up (round-half-even would give 0 and 2).
    assert align_corners_index(3, 5).tolist() == [0, 1, 1, 2, 2]
    # Downscale by 2: index = round(dst * 63/31) in float32.
    expected = [int(np.floor(np.float32(i) * (np.float32(63) / np.float32(31)) + 0.5)) for i in range(32)]
    assert align_corners_index(64, 32).tolist() == expected
    assert align_corners_index(64, 32).tolist() != list(range(0, 64, 2))


def _random_case(n, c, h, w, hole_per_sample=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, c, h, w, generator=g)
    mask = torch.zeros(n if hole_per_sample else 1, 1, h, w)
    for i in range(mask.shape[0]):
        top = int(torch.randint(0, h // 2, (1,), generator=g))
        left = int(torch.randint(0, w // 2, (1,), generator=g))
        mask[i, :, top : top + h // 3, left : left + w // 3] = 1
    return f, mask


# Sizes and settings the goldens do not cover: odd 1/rate grids, non-square, even patch sizes,
# wider fuse kernels, rates 1..4. The loop reference is the official algorithm written plainly.
@pytest.mark.parametrize(
    ("shape", "kwargs"),
    [
        ((2, 8, 36, 20), {"rate": 2}),
        ((1, 4, 30, 42), {"rate": 1, "fuse_k": 5}),
        ((2, 6, 24, 40), {"rate": 4, "ksize": 2}),
        ((3, 5, 22, 34), {"rate": 2, "ksize": 5, "fuse_k": 2}),
        ((1, 4, 16, 16), {"rate": 2, "fuse": False, "softmax_scale": 3.0}),
    ],
)
def test_batched_matches_per_sample_loop(shape, kwargs) -> None:
    f, mask = _random_case(*shape)
    b = torch.randn_like(f)
    layer = ContextualAttention(**kwargs)
    y, offsets = layer(f, b, mask)
    y_ref, off_ref = contextual_attention_loop(f, b, mask, **kwargs)
    torch.testing.assert_close(y, y_ref, atol=2e-5, rtol=1e-5)
    assert (offsets == off_ref).float().mean() >= 0.99


@pytest.mark.parametrize(("shape", "kwargs"), [((2, 4, 20, 28), {"rate": 2}), ((1, 3, 18, 14), {"rate": 1})])
def test_gradients_match_per_sample_loop(shape, kwargs) -> None:
    """The shift sums' hand-written backward (fuse, Gram shifts, paste) against autograd
    through the plain loop, for the foreground and the background separately."""
    f, mask = _random_case(*shape, seed=7)
    b = torch.randn_like(f)
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(8))
    grads = []
    for attend in (ContextualAttention(**kwargs), lambda *a: contextual_attention_loop(*a, **kwargs)):
        fx, bx = f.clone().requires_grad_(True), b.clone().requires_grad_(True)
        y, _ = attend(fx, bx, mask)
        (y * weight).sum().backward()
        grads.append((fx.grad, bx.grad))
    for ours, loop in zip(*grads, strict=True):
        torch.testing.assert_close(ours, loop, atol=1e-4, rtol=1e-4)


def test_per_sample_masks_equal_running_each_sample_alone() -> None:
    f, mask = _random_case(3, 8, 32, 48)
    layer = ContextualAttention(rate=2)
    y, offsets = layer(f, f, mask)
    for i in range(3):
        y_i, off_i = layer(f[i : i + 1], f[i : i + 1], mask[i : i + 1])
        torch.testing.assert_close(y[i : i + 1], y_i, atol=1e-5, rtol=1e-5)
        assert torch.equal(offsets[i : i + 1], off_i)
    # And a shared mask is not what per-sample masks compute.
    y_shared, _ = layer(f, f, mask[:1])
    assert (y_shared[1:] - y[1:]).abs().max() > 1e-3


@pytest.mark.parametrize("chunk_size", [1, 20, 48, 100])
def test_chunked_equals_unchunked(chunk_size) -> None:
    f, mask = _random_case(2, 8, 40, 48, seed=3)
    full = ContextualAttention(rate=2, fuse_k=3)
    chunked = ContextualAttention(rate=2, fuse_k=3, chunk_size=chunk_size)
    y, off = full(f, f, mask)
    y_c, off_c = chunked(f, f, mask)
    assert (y - y_c).abs().max().item() < 1e-5
    assert torch.equal(off, off_c)


def test_chunked_gradients_equal_unchunked() -> None:
    f, mask = _random_case(2, 4, 24, 32, seed=5)
    grads = []
    for chunk in (None, 8):
        x = f.clone().requires_grad_(True)
        y, _ = ContextualAttention(rate=2, chunk_size=chunk)(x, x, mask)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_hole_whose_features_equal_a_known_patch_gets_that_patch_back() -> None:
    torch.manual_seed(1)
    c, h, w = 8, 16, 16
    b = torch.randn(1, c, h, w)
    f = torch.randn(1, c, h, w)
    # The foreground around (5, 6) is a copy of the background around (11, 3), known there.
    f[:, :, 4:7, 5:8] = b[:, :, 10:13, 2:5]
    mask = torch.zeros(1, 1, h, w)
    mask[:, :, 3:8, 4:9] = 1
    layer = ContextualAttention(ksize=3, rate=1, fuse=False, softmax_scale=1000.0)
    y, offsets = layer(f, b, mask)
    assert offsets[0, :, 5, 6].tolist() == [11 - 5, 3 - 6]
    # rate 1 pastes 2x2 patches; each output pixel gets 4 overlapping pastes, divided by 4.
    assert torch.allclose(y[0, :, 5, 6], b[0, :, 11, 3], atol=1e-3)


def test_all_hole_mask_is_finite_and_defined() -> None:
    f = torch.randn(2, 4, 16, 16, requires_grad=True)
    mask = torch.ones(2, 1, 16, 16)
    y, offsets = ContextualAttention(rate=2)(f, f, mask)
    assert torch.isfinite(y).all()
    assert torch.equal(y, torch.zeros_like(y))  # no valid patch: nothing is pasted
    y.sum().backward()
    assert torch.isfinite(f.grad).all()
    assert offsets.shape == (2, 2, 8, 8)


def test_offsets_and_flow_shapes() -> None:
    f, mask = _random_case(2, 4, 32, 24)
    _, offsets = ContextualAttention(rate=2)(f, f, mask)
    assert offsets.dtype == torch.long
    assert offsets.shape == (2, 2, 16, 12)
    flow = flow_to_image(offsets)
    assert flow.shape == (2, 3, 16, 12)
    assert flow.min() >= -1
    assert flow.max() <= 1
    assert flow_to_image(offsets, scale=2).shape == (2, 3, 32, 24)


@pytest.mark.parametrize(
    ("f_shape", "b_shape", "mask_shape", "message"),
    [
        ((1, 4, 16, 16), (1, 4, 16, 8), (1, 1, 16, 16), "same shape"),
        ((2, 4, 16, 16), (2, 4, 16, 16), (2, 2, 16, 16), r"mask must be \(1 or N,1,H,W\)"),
        ((2, 4, 16, 16), (2, 4, 16, 16), (3, 1, 16, 16), "mask batch"),
        ((1, 4, 16, 16), (1, 4, 16, 16), (1, 1, 8, 8), "does not match"),
        ((1, 4, 15, 16), (1, 4, 15, 16), (1, 1, 15, 16), "divisible by rate=2"),
        ((4, 16, 16), (4, 16, 16), (1, 16, 16), r"\(N,C,H,W\)"),
    ],
)
def test_bad_input_gives_one_clear_line(f_shape, b_shape, mask_shape, message) -> None:
    with pytest.raises(ValueError, match=message) as info:
        ContextualAttention(rate=2)(torch.zeros(f_shape), torch.zeros(b_shape), torch.zeros(mask_shape))
    assert "\n" not in str(info.value)


def test_non_binary_mask_is_rejected() -> None:
    f = torch.zeros(1, 4, 16, 16)
    with pytest.raises(ValueError, match="binary"):
        ContextualAttention()(f, f, torch.full((1, 1, 16, 16), 0.5))


@pytest.mark.parametrize("kwargs", [{"ksize": 0}, {"stride": 2}, {"softmax_scale": 0.0}, {"rate": 1.5}])
def test_bad_constructor_arguments(kwargs) -> None:
    (name,) = kwargs
    # Named as the config key's tail (model.generator.attention.<name>), in one line.
    with pytest.raises(ValueError, match=rf"^attention\.{name} must") as info:
        ContextualAttention(**kwargs)
    assert "\n" not in str(info.value)


def test_attention_chooses_in_float32_and_pastes_in_bf16_inside_bf16_autocast() -> None:
    """Under bf16 autocast (precision=bf16, trainer=cpu_bf16 / gpu_bf16) the scores, softmax and
    offsets stay float32: the same offsets as outside autocast. Only the paste product takes
    bf16 operands; its float32 result differs from the float32 paste by about the rounding that
    the next bf16 convolution applies to it anyway."""
    from deepfill.models import ContextualAttention

    torch.manual_seed(0)
    f, b = torch.randn(2, 16, 24, 24), torch.randn(2, 16, 24, 24)
    mask = torch.zeros(2, 1, 24, 24)
    mask[:, :, 6:18, 6:18] = 1
    attention = ContextualAttention(rate=2)
    y, offsets = attention(f, b, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_autocast, offsets_autocast = attention(f, b, mask)
        _, offsets_bf16_inputs = attention(f.bfloat16(), b.bfloat16(), mask)
    assert y_autocast.dtype == torch.float32
    assert torch.equal(offsets_autocast, offsets)
    rounding = (y.bfloat16().float() - y).abs().max()
    error = (y_autocast - y).abs().max()
    assert 0 < error <= 2 * rounding
    # bf16 inputs are only rounded once, on the way in: the scores see the rounded inputs.
    _, offsets_rounded = attention(f.bfloat16().float(), b.bfloat16().float(), mask)
    assert torch.equal(offsets_bf16_inputs, offsets_rounded)
    # Outside autocast nothing is bf16.
    y_again, _ = attention(f, b, mask)
    assert torch.equal(y_again, y)


def test_the_chunk_budget_defaults_by_device() -> None:
    """16 MiB per chunk on a CPU (measured there), 64 MiB once freed memory is reused (the
    commands' allocator setting, which they pass to the layers), 256 MiB on a GPU (fewer kernel
    launches); an explicit budget or chunk size wins."""
    from deepfill.models import CPU_CHUNK_BYTES_REUSED, InpaintGenerator, set_cpu_chunk_bytes
    from deepfill.models.contextual_attention import ContextualAttention

    layer = ContextualAttention()
    # 64x64 features, batch 16, float32: one foreground row of scores is 16 MiB.
    args = (16, 64, 64, 4)
    # (rows per chunk, whether one row is over the budget)
    assert layer._rows_per_chunk(*args, torch.device("cpu")) == (1, False)
    assert layer._rows_per_chunk(*args, torch.device("cuda")) == (16, False)
    set_cpu_chunk_bytes(layer, CPU_CHUNK_BYTES_REUSED)
    assert layer._rows_per_chunk(*args, torch.device("cpu")) == (4, False)
    assert layer._rows_per_chunk(*args, torch.device("cuda")) == (16, False)
    set_cpu_chunk_bytes(layer, None)
    assert layer._rows_per_chunk(*args, torch.device("cpu")) == (1, False)
    assert ContextualAttention(chunk_bytes=2**20)._rows_per_chunk(*args, torch.device("cpu")) == (1, True)
    assert ContextualAttention(chunk_bytes=64 * 2**20)._rows_per_chunk(*args, torch.device("cuda")) == (
        4,
        False,
    )
    assert ContextualAttention(chunk_size=128)._rows_per_chunk(*args, torch.device("cpu")) == (2, False)
    with pytest.raises(ValueError, match="chunk_bytes must be >= 1"):
        ContextualAttention(chunk_bytes=0)
    # The generator's layer gets it too, and nothing else of the process decides it.
    generator = set_cpu_chunk_bytes(InpaintGenerator(cnum=8), CPU_CHUNK_BYTES_REUSED)
    assert generator.refine.attention.cpu_chunk_bytes == CPU_CHUNK_BYTES_REUSED
    assert ContextualAttention().cpu_chunk_bytes == 16 * 2**20


def test_rows_over_the_budget_run_with_large_blocks_returned(monkeypatch) -> None:
    """Once one row of scores exceeds the chunk budget, the CPU loop runs inside
    large_blocks_returned (the kept heap would fragment); within budget it does not. The
    results are the same either way."""
    import contextlib

    from deepfill.models import contextual_attention

    entered = []

    @contextlib.contextmanager
    def recording():
        entered.append(True)
        yield

    monkeypatch.setattr(contextual_attention, "large_blocks_returned", recording)
    torch.manual_seed(0)
    f, b = torch.randn(2, 2, 8, 16, 16)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:10, 3:12] = 1
    # 8x8 grid, batch 2: one row of scores is 2 * 8 * 64 * 4 bytes = 4 KiB.
    y_within, offsets_within = ContextualAttention(chunk_bytes=4096)(f, b, mask)
    assert entered == []
    y_over, offsets_over = ContextualAttention(chunk_bytes=1024)(f, b, mask)
    assert entered == [True]
    assert torch.equal(y_over, y_within)
    assert torch.equal(offsets_over, offsets_within)
    ContextualAttention(chunk_size=1)(f, b, mask)  # rows asked for explicitly: no budget
    assert entered == [True]


def test_shift_sums_equal_a_zero_filled_sum_of_their_pieces() -> None:
    """The shift-sum builder (largest two pieces added where they overlap, the rest copied or
    added, the uncovered part zeroed) gives the plain zeros-plus-pieces sum for overlapping,
    disjoint, nested and empty pieces."""
    from deepfill.models.layers import sum_into

    generator = torch.Generator().manual_seed(0)
    shape = (2, 7, 6, 5)
    for trial in range(60):
        pieces = []
        for _ in range(int(torch.randint(0, 5, (1,), generator=generator))):
            index = [slice(None)]
            for size in shape[1:]:
                lo, hi = sorted(torch.randint(0, size + 1, (2,), generator=generator).tolist())
                index.append(slice(lo, hi))
            view = torch.zeros(shape)[tuple(index)]
            pieces.append((tuple(index), torch.randn(view.shape, generator=generator)))
        expected = torch.zeros(shape)
        for index, value in pieces:
            expected[index] += value
        got = sum_into(torch.empty(shape), pieces)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, msg=f"trial {trial}")


def test_second_derivatives_through_the_layer() -> None:
    """Gradients of gradients (a penalty on input gradients through the generator) still work:
    the shift sums' fast in-place path steps aside when their pieces need gradients."""
    torch.manual_seed(0)
    layer = ContextualAttention(rate=1)
    f = torch.randn(1, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    mask[..., 2:4, 2:4] = 1
    assert torch.autograd.gradgradcheck(lambda x: layer(x, x, mask)[0], (f,))


def _subnormals(x: torch.Tensor) -> int:
    magnitude = x.detach().abs()
    return int(((magnitude > 0) & (magnitude < torch.finfo(x.dtype).tiny)).sum())


def test_no_subnormal_values_where_every_known_patch_scores_far_below_the_hole() -> None:
    """Hole features pointing away from every known patch: the masked softmax gives the known
    patches weights below float32's normal range (the zeroed hole scores win). Such weights
    must come out as zeros: subnormal operands make CPU arithmetic several times slower in
    any process that does not flush them (a user's own script), and they carry nothing."""
    channels = 16
    g = torch.Generator().manual_seed(0)
    f = torch.ones(2, channels, 32, 32) / channels**0.5 + 0.3 * torch.randn(2, channels, 32, 32, generator=g)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    f = torch.where(mask.bool(), -3.0 * f, f)
    y, offsets = ContextualAttention(rate=2)(f, f, mask)
    y_loop, offsets_loop = contextual_attention_loop(f, f, mask, rate=2)
    assert _subnormals(y_loop) > 0  # the case does reach the subnormal range
    assert _subnormals(y) == 0
    torch.testing.assert_close(y, y_loop, atol=2e-5, rtol=1e-5)
    assert torch.equal(offsets, offsets_loop)  # still the best known patch, however small its weight
    x = f.clone().requires_grad_(True)
    y_grad, _ = ContextualAttention(rate=2)(x, x, mask)
    (y_grad * torch.randn(y_grad.shape, generator=g)).sum().backward()
    assert _subnormals(y_grad) == 0 and _subnormals(x.grad) == 0
    torch.testing.assert_close(y_grad, y, atol=1e-6, rtol=1e-5)
