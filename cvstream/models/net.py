"""The embedding network: backbone -> embedding (L2-normalised) -> cosine classifier that grows.

The embedding layer is a linear map, or, for a network that a model upgrade built for `bt2`,
BT^2's basis transformation (`BasisTransform`). `EmbeddingNet.spec` is everything needed to
build the same network again (a checkpoint keeps it: an upgrade changes it mid-run).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

from cvstream.models.backbones import build_backbone


class BasisTransform(nn.Module):
    """BT^2's embedding head (Zhou et al., ICCV 2023): an orthonormal change of basis of [a; C f].

    `a` (`extra_dims`, unit length) is a branch meant for compatibility, `f` (the other `dim - extra_dims`, unit
    length, scaled by C) the new model's own embedding. `P` rotates `C f`, then `O` rotates the first `old_dim`
    coordinates of `[a; P C f]`: out = [O z[:old_dim]; z[old_dim:]]. Both are orthogonal, so out keeps all of
    `f` (inner products of outs are <a, a'> + C^2 <f, f'>), while its first `old_dim` coordinates, trained
    against the old generation, mix `a` with part of `f`: the extra dimensions hold what compatibility cannot.
    """

    def __init__(self, in_features: int, *, dim: int, old_dim: int, extra_dims: int, scale: float):
        super().__init__()
        if not 1 <= extra_dims <= old_dim <= dim or extra_dims >= dim:
            raise ValueError(f"basis transform: need 1 <= extra_dims ({extra_dims}) <= old_dim ({old_dim}) <= dim ({dim}), extra_dims < dim")
        self.old_dim, self.scale = old_dim, scale
        self.compatible = nn.Linear(in_features, extra_dims)
        self.new = nn.Linear(in_features, dim - extra_dims)
        self.rotate_new = orthogonal(nn.Linear(dim - extra_dims, dim - extra_dims, bias=False))
        self.rotate_old = orthogonal(nn.Linear(old_dim, old_dim, bias=False))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        a = F.normalize(self.compatible(features).float(), dim=1)
        f = F.normalize(self.new(features).float(), dim=1)
        z = torch.cat([a, self.rotate_new(self.scale * f).float()], dim=1)
        return torch.cat([self.rotate_old(z[:, : self.old_dim]).float(), z[:, self.old_dim :]], dim=1)


def build_head(name: str | None, *, in_features: int, dim: int, **params) -> nn.Module:
    """The embedding layer: `None`, a linear map; `"basis"`, BT^2's `BasisTransform` with `params`."""
    if name is None:
        return nn.Linear(in_features, dim)
    if name == "basis":
        return BasisTransform(in_features, dim=dim, **params)
    raise ValueError(f"unknown embedding head {name!r}")


class EmbeddingNet(nn.Module):
    def __init__(
        self, *, backbone: str, in_channels: int, width: int, embedding_dim: int, head: dict | None = None,
        input_stats: tuple[list[float], list[float]] | None = None,
    ):
        """`input_stats`: per-channel (mean, std) of the data set's pixels in [0, 1]; with it, the [-1, 1] inputs the
        trainer gives are normalised by them first (`training.input_scaling: mean-std`)."""
        super().__init__()
        self.spec = {"backbone": backbone, "in_channels": in_channels, "width": width, "embedding_dim": embedding_dim,
                     "head": dict(head) if head else None}
        if input_stats is not None:
            self.spec["input_stats"] = [list(map(float, input_stats[0])), list(map(float, input_stats[1]))]
            mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in input_stats)
            # (x01 - mean) / std with x01 = (x + 1) / 2: one multiply-add on the [-1, 1] input
            self.register_buffer("input_scale", 0.5 / std, persistent=False)
            self.register_buffer("input_shift", (0.5 - mean) / std, persistent=False)
        else:
            self.input_scale = self.input_shift = None
        self.backbone = build_backbone(backbone, in_channels=in_channels, width=width)
        head = dict(head or {})
        self.embed = build_head(head.pop("name", None), in_features=self.backbone.out_dim, dim=embedding_dim, **head)
        self.embedding_dim = embedding_dim
        # Classifier rows, one per known class, and the original class id of each row.
        self.weight = nn.Parameter(torch.empty(0, embedding_dim))
        self.register_buffer("class_ids", torch.empty(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The L2-normalised embedding f(x)."""
        if self.input_scale is not None and x.dim() == 4:
            x = torch.addcmul(self.input_shift.to(x.dtype), x, self.input_scale.to(x.dtype))
        return self.embedding(self.backbone(x))

    def embedding(self, features: torch.Tensor) -> torch.Tensor:
        """The L2-normalised embedding of backbone features, for a method that also uses the features themselves."""
        return F.normalize(self.embed(features).float(), dim=1)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each embedding to each class row: the classifier's logits before 1/T."""
        return embeddings @ F.normalize(self.weight.float(), dim=1).t()

    @property
    def num_classes(self) -> int:
        return int(self.class_ids.numel())

    def rows_of(self, class_ids: torch.Tensor) -> torch.Tensor:
        """Classifier row of each original class id (all must be known)."""
        known = self.class_ids
        order = torch.argsort(known)
        pos = torch.searchsorted(known[order], class_ids)
        pos = pos.clamp(max=len(known) - 1)
        rows = order[pos]
        if not torch.equal(known[rows], class_ids):
            raise KeyError("a class id has no classifier row")
        return rows

    @torch.no_grad()
    def add_classes(self, class_ids: list[int] | torch.Tensor, generator: torch.Generator, *, init: str = "normal") -> int:
        """Grow the classifier by the unknown ids; rows of known classes are kept as they are. New rows: `normal`,
        N(0, 1/d) (length about 1); `uniform`, U(-1/sqrt(d), 1/sqrt(d)) (length about 0.58, as the CVS code's)."""
        class_ids = torch.as_tensor(class_ids, dtype=torch.long).flatten().cpu()
        known = set(self.class_ids.cpu().tolist())
        new = [c for c in dict.fromkeys(class_ids.tolist()) if c not in known]
        if not new:
            return 0
        device = self.weight.device
        if init == "uniform":
            rows = (torch.rand(len(new), self.embedding_dim, generator=generator) * 2 - 1) / self.embedding_dim**0.5
        else:
            rows = torch.randn(len(new), self.embedding_dim, generator=generator) / self.embedding_dim**0.5
        self.weight = nn.Parameter(torch.cat([self.weight.data, rows.to(device)]))
        self.class_ids = torch.cat([self.class_ids, torch.tensor(new, dtype=torch.long, device=self.class_ids.device)])
        return len(new)
