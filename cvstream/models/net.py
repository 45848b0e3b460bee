"""The embedding network: backbone -> embedding (L2-normalised) -> cosine classifier that grows."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cvstream.models.backbones import build_backbone


class EmbeddingNet(nn.Module):
    def __init__(self, *, backbone: str, in_channels: int, width: int, embedding_dim: int):
        super().__init__()
        self.backbone = build_backbone(backbone, in_channels=in_channels, width=width)
        self.embed = nn.Linear(self.backbone.out_dim, embedding_dim)
        self.embedding_dim = embedding_dim
        # Classifier rows, one per known class, and the original class id of each row.
        self.weight = nn.Parameter(torch.empty(0, embedding_dim))
        self.register_buffer("class_ids", torch.empty(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The L2-normalised embedding f(x)."""
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
    def add_classes(self, class_ids: list[int] | torch.Tensor, generator: torch.Generator) -> int:
        """Grow the classifier by the unknown ids; rows of known classes are kept as they are."""
        class_ids = torch.as_tensor(class_ids, dtype=torch.long).flatten().cpu()
        known = set(self.class_ids.cpu().tolist())
        new = [c for c in dict.fromkeys(class_ids.tolist()) if c not in known]
        if not new:
            return 0
        device = self.weight.device
        rows = torch.randn(len(new), self.embedding_dim, generator=generator) / self.embedding_dim**0.5
        self.weight = nn.Parameter(torch.cat([self.weight.data, rows.to(device)]))
        self.class_ids = torch.cat([self.class_ids, torch.tensor(new, dtype=torch.long, device=self.class_ids.device)])
        return len(new)
