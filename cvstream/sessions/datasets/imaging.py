"""Decoding helpers shared by the file-based data sets: Pillow in, uint8 (N, C, H, W) out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cvstream.errors import DataError


def decode(paths: list[Path], *, size: int | None, channels: int, what: str) -> np.ndarray:
    """Every image as uint8 (N, channels, S, S); without `size` all images must share one size."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    mode = "L" if channels == 1 else "RGB"
    out: np.ndarray | None = None
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                image = image.convert(mode)
                if size is not None and image.size != (size, size):
                    image = ImageOps.fit(image, (size, size), Image.Resampling.BILINEAR)  # centre crop to square, then resize
                pixels = np.asarray(image, dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataError(f"{what}: cannot read the image {path}: {exc}", key_path="dataset.root") from None
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        if out is None:
            out = np.empty((len(paths), *pixels.shape), dtype=np.uint8)
        elif pixels.shape != out.shape[1:]:
            raise DataError(
                f"{what}: {path} is {pixels.shape[2]}x{pixels.shape[1]}, earlier images are {out.shape[3]}x{out.shape[2]}; "
                "set dataset.image_size to resize them all",
                key_path="dataset.image_size",
            )
        out[i] = pixels
    if out is None:
        raise DataError(f"{what}: no images found", key_path="dataset.root")
    return out


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Area-resize a uint8 (N, C, H, W) array to (N, C, size, size), in chunks to bound memory."""
    if images.shape[-2:] == (size, size):
        return images
    chunks = []
    for start in range(0, len(images), 4096):
        batch = torch.from_numpy(np.asarray(images[start : start + 4096])).float()
        chunks.append(F.interpolate(batch, size=(size, size), mode="area").round().clamp(0, 255).to(torch.uint8).numpy())
    return np.concatenate(chunks) if chunks else images
