"""Geometry and input normalisation shared by the loader (image -> crop), evaluation (crop -> image)
and the PyTorch-free onnxruntime path (``inference/onnx_infer.py``); nothing here imports torch.

The box -> (center, scale) rule and ``get_affine_transform`` follow the authors' code
(Microsoft pose-estimation style, as in CE2P): three point pairs, the source width
``scale[0]`` maps onto the crop width.
"""

from __future__ import annotations

import cv2
import numpy as np

# ImageNet statistics in the order the authors apply them: to channels 0, 1, 2 of a BGR image
# (docs/reference.md section 3.5). Their weights expect exactly this input: do not convert to RGB.
MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def normalize_array(image: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 BGR array -> 3 x H x W float32 array, ``(x / 255 - MEAN) / STD`` per channel."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"normalize_image expects an H x W x 3 image, got shape {tuple(image.shape)}")
    chw = image.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    chw -= np.asarray(MEAN, dtype=np.float32).reshape(3, 1, 1)
    chw /= np.asarray(STD, dtype=np.float32).reshape(3, 1, 1)
    return chw


def box_to_center_scale(width: int, height: int, aspect_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Center and scale of the whole-image box ``[0, 0, w-1, h-1]`` for a crop of W/H ``aspect_ratio``.

    As the authors: w' = w-1, h' = h-1, center = (w'/2, h'/2), and the scale widened to the
    crop's aspect ratio so the image is letterboxed, never cropped.
    """
    w, h = float(width - 1), float(height - 1)
    center = np.array([w * 0.5, h * 0.5], dtype=np.float32)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    return center, np.array([w, h], dtype=np.float32)


def _rotate(point: np.ndarray, rot_rad: float) -> np.ndarray:
    sn, cs = np.sin(rot_rad), np.cos(rot_rad)
    return np.array([point[0] * cs - point[1] * sn, point[0] * sn + point[1] * cs], dtype=np.float32)


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = a - b
    return b + np.array([-d[1], d[0]], dtype=np.float32)


def get_affine_transform(
    center: np.ndarray,
    scale: np.ndarray,
    rotation: float,
    output_size: tuple[int, int],
    inverse: bool = False,
) -> np.ndarray:
    """2 x 3 matrix taking image coordinates to crop coordinates (or back with ``inverse``).

    ``output_size`` is the crop's ``(height, width)``; ``rotation`` is in degrees.
    """
    scale = np.asarray(scale, dtype=np.float32)
    center = np.asarray(center, dtype=np.float32)
    dst_h, dst_w = output_size
    rot_rad = np.pi * rotation / 180.0
    src_dir = _rotate(np.array([0.0, scale[0] * -0.5], dtype=np.float32), rot_rad)
    dst_dir = np.array([0.0, dst_w * -0.5], dtype=np.float32)

    src = np.zeros((3, 2), dtype=np.float32)
    dst = np.zeros((3, 2), dtype=np.float32)
    src[0] = center
    src[1] = center + src_dir
    dst[0] = [dst_w * 0.5, dst_h * 0.5]
    dst[1] = dst[0] + dst_dir
    src[2] = _third_point(src[0], src[1])
    dst[2] = _third_point(dst[0], dst[1])
    if inverse:
        return cv2.getAffineTransform(dst, src)
    return cv2.getAffineTransform(src, dst)


def warp_to_crop(
    image: np.ndarray, matrix: np.ndarray, crop_size: tuple[int, int], *, nearest: bool, border_value: int
) -> np.ndarray:
    """Warp ``image`` into a ``(height, width)`` crop: bilinear for images, nearest for labels."""
    h, w = crop_size
    return cv2.warpAffine(
        image,
        matrix,
        (int(w), int(h)),
        flags=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(border_value, border_value, border_value),
    )


def crop_to_image(
    pred: np.ndarray,
    center: np.ndarray,
    scale: np.ndarray,
    width: int,
    height: int,
    crop_size: tuple[int, int],
    truncate_center: bool = False,
) -> np.ndarray:
    """Warp a crop-sized label map back onto the original ``height x width`` image (nearest, border 0).

    ``truncate_center`` reproduces the authors' evaluation, which stored centers as int32 and so
    shifted the inverse warp by up to half a pixel.
    """
    center = np.asarray(center, dtype=np.float32)
    if truncate_center:
        center = center.astype(np.int32).astype(np.float32)
    matrix = get_affine_transform(center, scale, 0.0, crop_size, inverse=True)
    return cv2.warpAffine(
        np.ascontiguousarray(pred, dtype=np.uint8),
        matrix,
        (int(width), int(height)),
        flags=cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
