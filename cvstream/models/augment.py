"""Training augmentation on batches of decoded uint8 images (B, C, H, W), seeded by the trainer's generator.

`crop_flip` is the random crop (reflected or black padding) and horizontal flip. `rand_augment` is the
RandAugment of the `randaugment` package (1.0.2) that the CVS code's loaders apply after crop and flip:
per image, two operations drawn from fifteen, each with a magnitude level drawn from 1..9 and applied with
probability 0.5. Here each operation runs once per batch on the images that drew it, with per-image
magnitudes, instead of once per image on a PIL image: the draws come from the given generator, and the
pixel values differ from PIL's only by interpolation and rounding.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF


def crop_flip(x: torch.Tensor, generator: torch.Generator, *, pad: int = 4, padding: str = "reflect", flip: bool = True) -> torch.Tensor:
    """Random crop of the image padded by `pad` (`reflect`: mirrored edges; `zeros`: black) and, optionally, a
    horizontal flip, per sample. Works on any dtype: the crop is a gather, so it commutes with input scaling."""
    b, _, h, w = x.shape
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    rows = oy[:, None] + torch.arange(h, device=x.device) - pad  # source row of each output row, before padding
    cols = ox[:, None] + torch.arange(w, device=x.device) - pad
    if padding == "reflect":
        inside_rows = inside_cols = None
        rows, cols = _reflect(rows, h), _reflect(cols, w)
    else:
        inside_rows, inside_cols = (rows >= 0) & (rows < h), (cols >= 0) & (cols < w)
        rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    out = x[batch, channels, rows[:, None, :, None], cols[:, None, None, :]]
    if inside_rows is not None:
        out = out * (inside_rows[:, None, :, None] & inside_cols[:, None, None, :]).to(out.dtype)
    if flip:
        flips = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        out = torch.where(flips[:, None, None, None], out.flip(3), out)
    return out


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Mirror indices outside [0, size) back inside, the edge not repeated (as torch's reflect padding)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


# Magnitude of each level 0..9, as the randaugment package's ranges (ten bins; levels 1..9 are drawn).
_LEVELS = {
    "shear": np.linspace(0, 0.3, 10),
    "translate": np.linspace(0, 150 / 331, 10),
    "rotate": np.linspace(0, 30, 10),
    "enhance": np.linspace(0.0, 0.9, 10),  # color, contrast, sharpness, brightness: factor 1 +- level
    "posterize": np.round(np.linspace(8, 4, 10), 0),
    "solarize": np.linspace(256, 0, 10),
    "cutout": np.round(np.linspace(0, 20, 10), 0),
}
_FILL = 128  # the package's fill colour of geometric operations
_CUTOUT_FILL = (125, 122, 113)


def _magnitude(kind: str, level: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(_LEVELS[kind], dtype=torch.float32, device=level.device)[level]


def _affine(x: torch.Tensor, matrix: torch.Tensor, mode: str) -> torch.Tensor:
    """PIL's affine transform: output pixel (x, y) takes the input at (a x + b y + c, d x + e y + f), in pixel
    coordinates (pixel i spans [i, i + 1]); `matrix` is (N, 6); outside the image, the fill colour."""
    _, _, h, w = x.shape
    a, b, c, d, e, f = matrix.unbind(1)
    theta = torch.stack([
        torch.stack([a, b * h / w, a + b * h / w + 2 * c / w - 1], dim=1),
        torch.stack([d * w / h, e, d * w / h + e + 2 * f / h - 1], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float() - _FILL, grid, mode=mode, padding_mode="zeros", align_corners=False) + _FILL
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _blend(x: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance: degenerate + factor * (image - degenerate), per image."""
    out = degenerate + factor.view(-1, 1, 1, 1) * (x.float() - degenerate)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x.float()
    r, g, b = x.float().unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b).round_()[:, None]


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter (3x3, centre 5, the rest 1, over 13); the border pixels stay as they are."""
    c = x.shape[1]
    kernel = torch.ones(3, 3, device=x.device)
    kernel[1, 1] = 5
    kernel = (kernel / 13).expand(c, 1, 3, 3)
    out = x.float().clone()
    out[:, :, 1:-1, 1:-1] = F.conv2d(x.float(), kernel, groups=c).round_()
    return out


def _sheared(x: torch.Tensor, mode: str, *, b=0.0, c=0.0, d=0.0, f=0.0) -> torch.Tensor:
    """The affine map (1, b, c, d, 1, f), each entry a per-image tensor or 0: shears and translations."""
    zeros = torch.zeros(len(x), device=x.device)
    entries = [1.0, b, c, d, 1.0, f]
    return _affine(x, torch.stack([zeros + e for e in entries], 1), mode)


def _shear_x(x, level, sign, _):
    return _sheared(x, "bicubic", b=_magnitude("shear", level) * sign)


def _shear_y(x, level, sign, _):
    return _sheared(x, "bicubic", d=_magnitude("shear", level) * sign)


def _translate_x(x, level, sign, _):
    return _sheared(x, "nearest", c=_magnitude("translate", level) * sign * x.shape[3])


def _translate_y(x, level, sign, _):
    return _sheared(x, "nearest", f=_magnitude("translate", level) * sign * x.shape[2])


def _rotate(x, level, _sign, _):
    """Counter-clockwise about the centre by the level's degrees (the package rotates one way only)."""
    theta = _magnitude("rotate", level) * (math.pi / 180)
    cos, sin = torch.cos(theta), torch.sin(theta)
    cx, cy = x.shape[3] / 2, x.shape[2] / 2
    c = cos * -cx - sin * -cy + cx
    f = sin * -cx + cos * -cy + cy
    return _affine(x, torch.stack([cos, -sin, c, sin, cos, f], 1), "nearest")


def _color(x, level, sign, _):
    return _blend(x, _grey(x), 1 + _magnitude("enhance", level) * sign)


def _contrast(x, level, sign, _):
    mean = (_grey(x).mean(dim=(1, 2, 3), keepdim=True) + 0.5).floor_()
    return _blend(x, mean, 1 + _magnitude("enhance", level) * sign)


def _sharpness(x, level, sign, _):
    return _blend(x, _smooth(x), 1 + _magnitude("enhance", level) * sign)


def _brightness(x, level, sign, _):
    return _blend(x, torch.zeros((), device=x.device), 1 + _magnitude("enhance", level) * sign)


def _posterize(x, level, _sign, _):
    drop = (8 - _magnitude("posterize", level)).to(torch.int64)
    mask = (255 - ((1 << drop) - 1)).to(torch.uint8)
    return x & mask.view(-1, 1, 1, 1)


def _solarize(x, level, _sign, _):
    threshold = _magnitude("solarize", level).view(-1, 1, 1, 1)
    return torch.where(x.float() >= threshold, 255 - x, x)


def _autocontrast(x, _level, _sign, _):
    low = x.amin(dim=(2, 3), keepdim=True).float()
    high = x.amax(dim=(2, 3), keepdim=True).float()
    scale = torch.where(high > low, 255 / (high - low).clamp(min=1), torch.ones_like(high))
    shift = torch.where(high > low, low, torch.zeros_like(low))
    return ((x.float() - shift) * scale).round_().clamp_(0, 255).to(torch.uint8)


def _equalize(x, _level, _sign, _):
    return TF.equalize(x)


def _invert(x, _level, _sign, _):
    return 255 - x


def _cutout(x, level, _sign, centre):
    """A black-ish square (the package's fill) of the level's size around a random centre."""
    _, c, h, w = x.shape
    half = (_magnitude("cutout", level) // 2).to(torch.int64)[:, None]
    cy, cx = (centre[:, :1] * h).floor().to(torch.int64), (centre[:, 1:] * w).floor().to(torch.int64)
    rows, cols = torch.arange(h, device=x.device)[None], torch.arange(w, device=x.device)[None]
    in_rows = (rows >= (cy - half).clamp(min=0)) & (rows < (cy + half).clamp(max=h))
    in_cols = (cols >= (cx - half).clamp(min=0)) & (cols < (cx + half).clamp(max=w))
    box = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]
    fill = torch.tensor(_CUTOUT_FILL if c == 3 else (_CUTOUT_FILL[0],) * c, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
    return torch.where(box, fill, x)


# The package's list, in its order: an operation's index is what a draw picks.
OPERATIONS = {
    "invert": _invert, "cutout": _cutout, "sharpness": _sharpness, "autocontrast": _autocontrast, "posterize": _posterize,
    "shear_x": _shear_x, "translate_x": _translate_x, "translate_y": _translate_y, "shear_y": _shear_y, "rotate": _rotate,
    "equalize": _equalize, "contrast": _contrast, "color": _color, "solarize": _solarize, "brightness": _brightness,
}


def rand_augment(x: torch.Tensor, generator: torch.Generator, *, operations: int = 2, probability: float = 0.5) -> torch.Tensor:
    """RandAugment as the randaugment package's: `operations` rounds, in each of which every image draws an
    operation, a level in 1..9 and a sign, and is changed with `probability`. uint8 in, uint8 out."""
    if x.dtype != torch.uint8:
        raise TypeError(f"rand_augment takes uint8 images, got {x.dtype}")
    x = x.clone()
    n, names = len(x), list(OPERATIONS)
    for _ in range(operations):
        op = torch.randint(0, len(names), (n,), generator=generator).to(x.device)
        level = torch.randint(1, 10, (n,), generator=generator).to(x.device)
        applied = (torch.rand(n, generator=generator) < probability).to(x.device)
        sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).to(x.device)
        centre = torch.rand(n, 2, generator=generator).to(x.device)
        for k, name in enumerate(names):
            rows = torch.nonzero(applied & (op == k)).flatten()
            if len(rows):
                x[rows] = OPERATIONS[name](x[rows], level[rows], sign[rows], centre[rows])
    return x


def channel_stats(images: np.ndarray, *, most: int = 10_000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W) in [0, 1], over an evenly strided subset of at most
    `most` images (the estimate moves in the fourth decimal)."""
    step = max(1, len(images) // most)
    sample = np.asarray(images[::step], dtype=np.float64) / 255.0
    axes = (0, 2, 3)
    return sample.mean(axis=axes).tolist(), sample.std(axis=axes).tolist()
