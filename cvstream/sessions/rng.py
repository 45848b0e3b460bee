"""One private random generator per concern, derived from the scenario seed and the concern's name.

Draws never come from the global RNG, so the same seed gives the same numbers whatever else
ran before. Where library code reads the global RNG itself (layer initialisation), it is
seeded from a concern's seed inside `torch.random.fork_rng`, which restores it afterwards.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def _key(concern: str) -> int:
    return int.from_bytes(hashlib.sha256(concern.encode()).digest()[:8], "little")


def numpy_rng(seed: int, concern: str, *extra: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _key(concern), *extra])))


def torch_seed(seed: int, concern: str, *extra: int) -> int:
    state = np.random.SeedSequence([seed, _key(concern), *extra]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def torch_generator(seed: int, concern: str, *extra: int, device: str | torch.device = "cpu") -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(torch_seed(seed, concern, *extra))
    return generator
