"""Run TensorFlow's own ops on random inputs and save the results (called in a subprocess).

Used by tests/test_tf_semantics.py: TensorFlow must not be imported into the test process
itself, which already holds PyTorch.
"""

from __future__ import annotations

import sys

import numpy as np
import tensorflow as tf


def main(out_path: str) -> None:
    rng = np.random.default_rng(0)
    results: dict[str, np.ndarray] = {}
    # resize_nearest_neighbor(align_corners=True), the resize of the official code.
    for i, (h, w, oh, ow) in enumerate([(64, 64, 32, 32), (17, 25, 34, 50), (34, 50, 17, 25), (7, 3, 5, 9)]):
        x = rng.standard_normal((1, h, w, 2)).astype(np.float32)
        y = tf.compat.v1.image.resize_nearest_neighbor(x, [oh, ow], align_corners=True)
        results[f"resize{i}_x"], results[f"resize{i}_y"] = x, y.numpy()
    # conv2d 'SAME' with strides and dilations at odd and even sizes.
    convs = [(17, 26, 3, 2, 1), (16, 16, 5, 2, 1), (34, 50, 3, 1, 16), (9, 13, 3, 2, 1), (10, 7, 5, 1, 2)]
    for i, (h, w, k, s, d) in enumerate(convs):
        x = rng.standard_normal((2, h, w, 3)).astype(np.float32)
        kernel = rng.standard_normal((k, k, 3, 4)).astype(np.float32)
        y = tf.nn.conv2d(x, kernel, strides=s, padding="SAME", dilations=d)
        results[f"conv{i}_x"], results[f"conv{i}_k"], results[f"conv{i}_y"] = x, kernel, y.numpy()
        results[f"conv{i}_meta"] = np.array([k, s, d])
    # extract_image_patches 'SAME' and conv2d_transpose 'SAME' (the paste of contextual attention).
    for i, (h, w, k, s) in enumerate([(17, 25, 3, 1), (34, 50, 4, 2), (48, 80, 2, 1), (12, 20, 8, 4)]):
        x = rng.standard_normal((1, h, w, 2)).astype(np.float32)
        patches = tf.image.extract_patches(x, [1, k, k, 1], [1, s, s, 1], [1, 1, 1, 1], "SAME")
        results[f"patch{i}_x"], results[f"patch{i}_y"] = x, patches.numpy()
        results[f"patch{i}_meta"] = np.array([k, s])
        small = rng.standard_normal((1, -(-h // s), -(-w // s), 3)).astype(np.float32)
        kernel = rng.standard_normal((k, k, 2, 3)).astype(np.float32)
        y = tf.nn.conv2d_transpose(small, kernel, [1, h, w, 2], strides=[1, s, s, 1], padding="SAME")
        results[f"deconv{i}_x"], results[f"deconv{i}_k"], results[f"deconv{i}_y"] = small, kernel, y.numpy()
    np.savez(out_path, **results)


if __name__ == "__main__":
    main(sys.argv[1])
