"""Backfill policies: which stale gallery items get re-embedded, and the FCT-style transform psi.

An item is *stale* when a newer generation than the one that embedded it is deployed.
`none` re-embeds nothing, `full` every stale item, `partial` a budget of them in a stated
order; `transform` learns psi: stored vectors -> new-generation vectors on items both
generations embedded, and maps the other stale items with it (optionally then `partial`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def stale_items(gallery, generation: int) -> np.ndarray:
    """Item ids whose stored vector was not embedded by `generation` (ascending)."""
    return np.flatnonzero(gallery.generations() < generation).astype(np.int64)


def budget_items(budget: int | float | None, *, gallery_size: int) -> int:
    """A budget as a number of items: a float is a fraction of the gallery (floored), an int a count."""
    if budget is None:
        return 0
    if isinstance(budget, float):
        return int(np.floor(budget * gallery_size + 1e-9))
    return int(budget)


def order_items(
    order: str, candidates: np.ndarray, *, gallery, rng: np.random.Generator, uncertainty: dict[int, float] | None = None
) -> np.ndarray:
    """`candidates` (item ids) sorted by `order`, first to be re-embedded first; ties go to the smaller item id."""
    candidates = np.sort(np.asarray(candidates, dtype=np.int64))
    if len(candidates) == 0:
        return candidates
    if order == "random":
        return candidates[rng.permutation(len(candidates))]
    if order == "oldest":
        generations = gallery.generations()[candidates]
        return candidates[np.argsort(generations, kind="stable")]
    if order == "far-from-mean":
        classes = gallery.class_of(candidates)
        unique, inverse = np.unique(classes, return_inverse=True)
        means, _ = gallery.class_means(unique)
        distance = np.linalg.norm(gallery.vectors(candidates).astype(np.float64) - means[inverse], axis=1)
        return candidates[np.argsort(-distance, kind="stable")]
    if order == "uncertainty":
        if uncertainty is None:
            raise ValueError("order uncertainty needs the transform's uncertainty of this session")
        score = np.array([uncertainty.get(int(i), -np.inf) for i in candidates])
        return candidates[np.argsort(-score, kind="stable")]
    raise ValueError(f"unknown backfill order {order!r}")


def plan_backfill(spec, *, gallery, generation: int, rng: np.random.Generator, uncertainty: dict[int, float] | None = None) -> np.ndarray:
    """The item ids to re-embed with `generation` this session, in order."""
    if spec.policy == "none":
        return np.empty(0, np.int64)
    stale = stale_items(gallery, generation)
    if spec.policy == "full":
        return stale
    if spec.policy == "transform" and spec.budget is None:
        return np.empty(0, np.int64)
    count = min(budget_items(spec.budget, gallery_size=len(gallery)), len(stale))
    return order_items(spec.order, stale, gallery=gallery, rng=rng, uncertainty=uncertainty)[:count]


# -- the transform psi (FCT, Ramanujan et al. 2022; uncertainty as in FastFill, Jaeckle et al. 2023) --


class TransformNet(torch.nn.Module):
    """psi: a residual MLP from stored vectors to new-generation vectors, with a log-variance head."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden), torch.nn.ReLU())
        self.out = torch.nn.Linear(hidden, dim)
        self.log_var = torch.nn.Linear(hidden, 1)
        # Start at the identity: compatible generations are already close.
        torch.nn.init.zeros_(self.out.weight)
        torch.nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return torch.nn.functional.normalize(x + self.out(h), dim=1), self.log_var(h).squeeze(1)


@dataclass
class FittedTransform:
    net: TransformNet
    forwards: int  # psi forwards spent in training
    seconds: float

    @torch.no_grad()
    def apply(self, vectors: np.ndarray, *, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Mapped vectors (L2-normalised float32) and the predicted squared error of each."""
        self.net.eval()
        device = next(self.net.parameters()).device
        mapped = np.empty_like(vectors, dtype=np.float32)
        variance = np.empty(len(vectors), dtype=np.float64)
        for start in range(0, len(vectors), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(vectors[start : start + batch_size], dtype=np.float32)).to(device)
            y, log_var = self.net(x)
            mapped[start : start + len(x)] = y.cpu().numpy()
            variance[start : start + len(x)] = log_var.exp().cpu().numpy()
        return mapped, variance


def fit_transform(
    old: np.ndarray, new: np.ndarray, *, hidden: int, epochs: int, lr: float, generator: torch.Generator,
    device: torch.device | str = "cpu", batch_size: int = 256,
) -> FittedTransform:
    """Train psi on pairs (stored vector, new-generation vector) of the same items."""
    import time

    clock = time.perf_counter()
    torch_device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))  # the init reads the global RNG
        net = TransformNet(old.shape[1], hidden).to(torch_device)
    x_all = torch.from_numpy(np.ascontiguousarray(old, dtype=np.float32)).to(torch_device)
    y_all = torch.from_numpy(np.ascontiguousarray(new, dtype=np.float32)).to(torch_device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    forwards = 0
    net.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x_all), generator=generator).split(batch_size):
            batch = batch.to(torch_device)
            mapped, log_var = net(x_all[batch])
            error = ((mapped - y_all[batch]) ** 2).sum(dim=1)
            # The mapping learns from the error; the variance head learns to predict it (Gaussian NLL, error detached).
            loss = error.mean() + (error.detach() * torch.exp(-log_var) + log_var).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            forwards += len(batch)
    return FittedTransform(net=net, forwards=forwards, seconds=time.perf_counter() - clock)


def transform_pairs(candidates: np.ndarray, *, preferred: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `count` of `candidates` to embed with both generations: `preferred` ones (the replay buffer) first."""
    candidates = np.asarray(candidates, dtype=np.int64)
    first = candidates[np.isin(candidates, preferred)]
    rest = candidates[~np.isin(candidates, preferred)]
    first = first[rng.permutation(len(first))]
    rest = rest[rng.permutation(len(rest))]
    return np.sort(np.concatenate([first, rest])[:count])
