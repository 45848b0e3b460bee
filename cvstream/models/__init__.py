"""Backbones, heads, losses, methods, and the trainer of one session."""

from __future__ import annotations

import torch

from cvstream.models.backbones import BACKBONES
from cvstream.models.methods import METHODS, Batch, Method, TrainContext
from cvstream.models.net import EmbeddingNet
from cvstream.sessions.rng import torch_seed


def build_model(scenario, *, in_channels: int) -> EmbeddingNet:
    """A fresh network, initialised from the scenario seed without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(torch_seed(scenario.seed, "model_init"))
        return EmbeddingNet(
            backbone=scenario.model.backbone,
            in_channels=in_channels,
            width=scenario.model.width,
            embedding_dim=scenario.model.embedding_dim,
        )


def build_method(scenario) -> Method:
    return METHODS.get(scenario.method.name)(scenario.method.params)


__all__ = ["BACKBONES", "METHODS", "Batch", "EmbeddingNet", "Method", "TrainContext", "build_method", "build_model"]
