"""The training augmentation on uint8 batches: crop and flip, and the randaugment package's RandAugment."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cvstream.models.augment import OPERATIONS, channel_stats, crop_flip, rand_augment
from cvstream.models.trainer import to_input


def images(n: int = 6, size: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_reflect_crop_on_uint8_equals_the_float_crop_of_torch_padding():
    x = images()
    ours = to_input(crop_flip(x, torch.Generator().manual_seed(1), padding="reflect", flip=True))
    g = torch.Generator().manual_seed(1)  # the same draws, in the same order: rows, columns, flips
    oy, ox = torch.randint(0, 9, (6,), generator=g), torch.randint(0, 9, (6,), generator=g)
    flips = torch.rand(6, generator=g) < 0.5
    padded = torch.nn.functional.pad(to_input(x), (4, 4, 4, 4), mode="reflect")
    for i in range(6):
        want = padded[i, :, oy[i] : oy[i] + 12, ox[i] : ox[i] + 12]
        assert torch.equal(ours[i], want.flip(2) if flips[i] else want)


def test_zero_padding_is_black_and_keeps_the_image_inside():
    x = torch.full((64, 3, 8, 8), 200, dtype=torch.uint8)
    out = crop_flip(x, torch.Generator().manual_seed(0), pad=4, padding="zeros", flip=False)
    assert set(out.unique().tolist()) <= {0, 200}
    assert (out == 0).any() and (out == 200).sum(dim=(1, 2, 3)).min() >= 3 * 4 * 4  # at least a 4x4 corner stays


def test_rand_augment_is_seeded_uint8_and_changes_about_three_quarters_of_the_images():
    x = images(n=400, size=16)
    a = rand_augment(x, torch.Generator().manual_seed(5))
    b = rand_augment(x, torch.Generator().manual_seed(5))
    assert a.dtype == torch.uint8 and a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, rand_augment(x, torch.Generator().manual_seed(6)))
    changed = (a != x).flatten(1).any(dim=1).float().mean().item()
    assert 0.6 < changed < 0.8  # 1 - 0.5^2 = 0.75 apply at least one operation; a few leave the pixels as they are
    with pytest.raises(TypeError):
        rand_augment(x.float(), torch.Generator())


def run(name: str, x: torch.Tensor, level: int, sign: float = 1.0, centre=(0.5, 0.5)) -> torch.Tensor:
    n = len(x)
    return OPERATIONS[name](x, torch.full((n,), level), torch.full((n,), sign), torch.tensor([centre] * n))


def test_operations_on_hand_made_images():
    flat = torch.full((1, 3, 8, 8), 100, dtype=torch.uint8)
    assert torch.equal(run("invert", flat, 5), 255 - flat)
    assert run("brightness", flat, 5, +1).unique().item() == 150  # factor 1 + 0.5
    assert run("brightness", flat, 5, -1).unique().item() == 50
    assert run("posterize", torch.full((1, 3, 2, 2), 255, dtype=torch.uint8), 9).unique().item() == 0xF0  # 4 bits kept
    assert run("solarize", torch.full((1, 3, 2, 2), 240, dtype=torch.uint8), 1).unique().item() == 15  # 240 >= 227.6: inverted
    assert run("solarize", torch.full((1, 3, 2, 2), 200, dtype=torch.uint8), 1).unique().item() == 200
    ramp = torch.arange(50, 114, dtype=torch.uint8).view(1, 1, 8, 8).expand(1, 3, 8, 8).contiguous()
    stretched = run("autocontrast", ramp, 1)
    assert stretched.min().item() == 0 and stretched.max().item() == 255
    cut = run("cutout", flat, 9, centre=(0.5, 0.5))  # size 20 covers all of an 8x8 image from its centre
    assert torch.equal(cut[0, :, 0, 0], torch.tensor([125, 122, 113], dtype=torch.uint8))
    shifted = run("translate_x", ramp, 9, +1)  # by 150/331 of the width, 3.63 px: pixel 0's centre reads 4.13, the right edge fill
    assert (shifted[..., -1] == 128).all() and torch.equal(shifted[..., 0], ramp[..., 4])
    assert torch.equal(run("rotate", flat, 9)[..., 4, 4], flat[..., 4, 4])  # the centre stays, corners get the fill
    assert (run("rotate", flat, 9)[..., 0, 0] == 128).all()


def test_channel_stats_on_known_pixels():
    x = np.zeros((4, 2, 2, 2), dtype=np.uint8)
    x[:, 1] = 255
    x[:2, 0] = 255
    mean, std = channel_stats(x)
    assert mean == pytest.approx([0.5, 1.0]) and std == pytest.approx([0.5, 0.0])
