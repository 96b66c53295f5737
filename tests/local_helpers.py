"""Synthetic photos for the local-matching tests: a random texture, and the same texture under
a known warp, so that true matches are known exactly."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

# a mild perspective warp: rotation, shear, shift and a little projective tilt
HOMOGRAPHY = np.array([[0.92, 0.12, 14.0], [-0.09, 0.95, 18.0], [2e-4, 1.5e-4, 1.0]])
AFFINE = np.array([[0.85, -0.2, 30.0], [0.22, 0.9, -10.0]])


def texture(seed: int, size: int = 256) -> np.ndarray:
    """(size, size, 3) uint8: coarse smoothed noise blobs plus finer grain, a 'coat' rich in
    corners that nothing else shares."""
    rng = np.random.default_rng(seed)
    coarse = cv2.resize(
        rng.random((size // 8, size // 8)).astype(np.float32),
        (size, size),
        interpolation=cv2.INTER_CUBIC,
    )
    fine = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), 2)
    grey = np.clip((0.7 * coarse + 0.6 * fine) / 1.3 * 255, 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def warped(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``image`` under a 3x3 homography or a 2x3 affine map, same size, black outside."""
    h, w = image.shape[:2]
    if matrix.shape == (2, 3):
        return cv2.warpAffine(image, matrix, (w, h))
    return cv2.warpPerspective(image, matrix, (w, h))


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(M, 2) points through a 3x3 or 2x3 matrix, by hand: [x, y, 1] @ M.T, then divide."""
    full = np.vstack([matrix, [0.0, 0.0, 1.0]]) if matrix.shape == (2, 3) else matrix
    ones = np.ones((len(points), 1))
    mapped = np.hstack([points.astype(np.float64), ones]) @ full.T
    return mapped[:, :2] / mapped[:, 2:3]


def pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array)
