"""The TF-semantic building blocks agree with TensorFlow's own ops at sizes the goldens lack.

Parity at 256x256 can hide padding and rounding details that odd sizes expose; these checks run
TensorFlow (the `tf` extra, installed by `make install`) in a subprocess on odd and even sizes,
strides and dilations, and compare with the PyTorch building blocks the model is made of.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deepfill.models.attention_patches import unfold_same as _unfold_same
from deepfill.models.layers import SameConv2d, resize_nearest, tf_same_padding
from helpers.run_if import RunIf

pytestmark = [pytest.mark.tf, RunIf(tensorflow=True)]


@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("tf") / "oracle.npz"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    script = Path(__file__).parent / "helpers" / "tf_oracle.py"
    result = subprocess.run(
        [sys.executable, str(script), str(out)], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


def nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(0, 3, 1, 2)


@pytest.mark.parametrize("i", range(4))
def test_resize_nearest_align_corners_equals_tf(oracle, i) -> None:
    x, y = oracle[f"resize{i}_x"], oracle[f"resize{i}_y"]
    ours = resize_nearest(nchw(x), y.shape[1:3])
    assert torch.equal(ours, nchw(y))


@pytest.mark.parametrize("i", range(5))
def test_same_conv_equals_tf(oracle, i) -> None:
    k, s, d = (int(v) for v in oracle[f"conv{i}_meta"])
    conv = SameConv2d(3, 4, k, stride=s, dilation=d, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(oracle[f"conv{i}_k"]).permute(3, 2, 0, 1))
        ours = conv(nchw(oracle[f"conv{i}_x"]))
    torch.testing.assert_close(ours, nchw(oracle[f"conv{i}_y"]), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("i", range(4))
def test_patches_and_transposed_paste_equal_tf(oracle, i) -> None:
    k, s = (int(v) for v in oracle[f"patch{i}_meta"])
    x = nchw(oracle[f"patch{i}_x"])
    patches = _unfold_same(x, k, s)  # (1, C*k*k, L), channel-major
    expected = oracle[f"patch{i}_y"]  # (1, oh, ow, k*k*C), channel-minor
    n, oh, ow, _ = expected.shape
    expected = (
        torch.from_numpy(expected).view(n, oh * ow, k, k, 2).permute(0, 4, 2, 3, 1).reshape(n, -1, oh * ow)
    )
    assert torch.equal(patches, expected)
    # conv2d_transpose 'SAME' = a full transposed conv cropped at the forward conv's pad-before.
    small, kernel = nchw(oracle[f"deconv{i}_x"]), torch.from_numpy(oracle[f"deconv{i}_k"])
    h, w = x.shape[-2:]
    full = F.conv_transpose2d(small, kernel.permute(3, 2, 0, 1), stride=s)
    top, left = tf_same_padding(h, k, s)[0], tf_same_padding(w, k, s)[0]
    ours = full[..., top : top + h, left : left + w]
    torch.testing.assert_close(ours, nchw(oracle[f"deconv{i}_y"]), atol=1e-4, rtol=1e-4)
