"""Backfill policies and orders: which stale gallery items get re-embedded, and the FCT-style transform psi.

An item is *stale* when a newer generation than the one that embedded it is deployed.
`none` re-embeds nothing, `full` every stale item, `partial` a budget of them in a stated
order; `transform` learns psi: stored vectors -> new-generation vectors on items both
generations embedded, and maps the other stale items with it (optionally then `partial`).

Both are registries. A policy is `(*, gallery, generation, budget, order, rng, uncertainty)
-> item ids to re-embed, in order`; it declares whether it takes a `budget` ("never",
"optional", "required") and whether it `maps` stale items with psi first (only then is
there an uncertainty). An order is `(candidates, *, gallery, rng, uncertainty) -> the
candidates, first to re-embed first`; candidates come sorted (ties go to the smaller item
id) and `needs_uncertainty` marks an order that ranks by psi's predicted error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cvstream.errors import UserError
from cvstream.registry import Registry

BACKFILL_POLICIES: Registry = Registry("backfill policy", attributes={"budget": "never", "maps": False})
BACKFILL_ORDERS: Registry = Registry("backfill order", attributes={"needs_uncertainty": False})


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


def backfill_problem(policy: str, budget, order: str, *, curve_order: str | None = None) -> str | None:
    """What is wrong with this policy, budget and order together (a message naming the key), or None."""
    chosen = BACKFILL_POLICIES.get(policy)
    if isinstance(budget, bool):
        return "budget must be a number"
    if budget is not None:
        if chosen.budget == "never":
            takers = [name for name in BACKFILL_POLICIES.names() if BACKFILL_POLICIES.get(name).budget != "never"]
            return f"budget applies to policies {listed(takers, 'and')}, not {policy}"
        if isinstance(budget, float) and not 0 < budget <= 1:
            return f"budget {budget} is outside its range: a fraction lies in (0, 1]; a count is a whole number >= 1"
        if isinstance(budget, int) and budget < 1:
            return f"budget {budget} is outside its range: a count is a whole number >= 1; a fraction lies in (0, 1]"
    elif chosen.budget == "required":
        return f"policy {policy} needs a budget (a fraction in (0, 1] or a count >= 1)"
    mapping = listed([name for name in BACKFILL_POLICIES.names() if BACKFILL_POLICIES.get(name).maps], "or")
    if BACKFILL_ORDERS.get(order).needs_uncertainty and not chosen.maps:
        return f"order {order} ranks items by the transform's uncertainty: it needs policy {mapping}"
    if curve_order is not None and BACKFILL_ORDERS.get(curve_order).needs_uncertainty and not chosen.maps:
        return f"curve_order {curve_order} needs policy {mapping}"
    return None


def listed(names: list[str], word: str) -> str:
    """`a`, `a and b`, `a, b or c`: names in a message."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {word} {names[-1]}"


def order_items(
    order: str, candidates: np.ndarray, *, gallery, rng: np.random.Generator, uncertainty: dict[int, float] | None = None
) -> np.ndarray:
    """`candidates` (item ids) sorted by `order`, first to be re-embedded first; ties go to the smaller item id."""
    candidates = np.sort(np.asarray(candidates, dtype=np.int64))
    if len(candidates) == 0:
        return candidates
    ordered = np.asarray(BACKFILL_ORDERS.get(order)(candidates, gallery=gallery, rng=rng, uncertainty=uncertainty), dtype=np.int64)
    if len(ordered) != len(candidates) or not np.array_equal(np.sort(ordered), candidates):
        raise UserError(f"backfill order {order!r} returned {len(ordered)} item ids that are not a reordering of its {len(candidates)} candidates")
    return ordered


def plan_backfill(spec, *, gallery, generation: int, rng: np.random.Generator, uncertainty: dict[int, float] | None = None) -> np.ndarray:
    """The item ids to re-embed with `generation` this session, in order (`spec`: its policy, budget and order)."""
    policy = BACKFILL_POLICIES.get(spec.policy)
    chosen = policy(gallery=gallery, generation=generation, budget=spec.budget, order=spec.order, rng=rng, uncertainty=uncertainty)
    return np.asarray(chosen, dtype=np.int64)


def budgeted(*, gallery, generation: int, budget, order: str, rng: np.random.Generator, uncertainty) -> np.ndarray:
    """The first `budget` stale items in `order` (what partial re-embeds, and transform after mapping)."""
    stale = stale_items(gallery, generation)
    count = min(budget_items(budget, gallery_size=len(gallery)), len(stale))
    return order_items(order, stale, gallery=gallery, rng=rng, uncertainty=uncertainty)[:count]


# -- policies ----------------------------------------------------------------------------------


@BACKFILL_POLICIES.register("none")
def no_backfill(*, gallery, generation, budget, order, rng, uncertainty) -> np.ndarray:
    return np.empty(0, np.int64)


@BACKFILL_POLICIES.register("full")
def full_backfill(*, gallery, generation, budget, order, rng, uncertainty) -> np.ndarray:
    return stale_items(gallery, generation)


@BACKFILL_POLICIES.register("partial", budget="required")
def partial_backfill(**arguments) -> np.ndarray:
    return budgeted(**arguments)


@BACKFILL_POLICIES.register("transform", budget="optional", maps=True)
def transform_then_partial(**arguments) -> np.ndarray:
    """psi has mapped the stale items already (the engine's transform step); then, with a budget, a partial backfill."""
    return budgeted(**arguments) if arguments["budget"] is not None else np.empty(0, np.int64)


# -- orders ------------------------------------------------------------------------------------


@BACKFILL_ORDERS.register("random")
def random_order(candidates: np.ndarray, *, gallery, rng: np.random.Generator, uncertainty) -> np.ndarray:
    return candidates[rng.permutation(len(candidates))]


@BACKFILL_ORDERS.register("oldest")
def oldest_first(candidates: np.ndarray, *, gallery, rng: np.random.Generator, uncertainty) -> np.ndarray:
    generations = gallery.generations()[candidates]
    return candidates[np.argsort(generations, kind="stable")]


@BACKFILL_ORDERS.register("far-from-mean")
def far_from_mean_first(candidates: np.ndarray, *, gallery, rng: np.random.Generator, uncertainty) -> np.ndarray:
    """Farthest from its class's mean stored vector first: the items a newer model is likeliest to move."""
    classes = gallery.class_of(candidates)
    unique, inverse = np.unique(classes, return_inverse=True)
    means, _ = gallery.class_means(unique)
    distance = np.linalg.norm(gallery.vectors(candidates).astype(np.float64) - means[inverse], axis=1)
    return candidates[np.argsort(-distance, kind="stable")]


@BACKFILL_ORDERS.register("uncertainty", needs_uncertainty=True)
def least_certain_first(candidates: np.ndarray, *, gallery, rng: np.random.Generator, uncertainty) -> np.ndarray:
    """The items psi mapped with the largest predicted error first (FastFill); unmapped ones last."""
    if uncertainty is None:
        raise ValueError("order uncertainty needs the transform's uncertainty of this session")
    score = np.array([uncertainty.get(int(i), -np.inf) for i in candidates])
    return candidates[np.argsort(-score, kind="stable")]


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
