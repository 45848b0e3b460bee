"""Backbones, heads, losses, methods, and the trainer of one session."""

from __future__ import annotations

import torch

from cvstream.errors import ScenarioError
from cvstream.models.backbones import BACKBONES
from cvstream.models.methods import METHODS, Batch, Method, TrainContext
from cvstream.models.net import EmbeddingNet
from cvstream.sessions.rng import torch_seed


def build_model(scenario, *, in_channels: int, input_ndim: int = 4) -> EmbeddingNet:
    """A fresh network, initialised from the scenario seed without touching the global RNG.

    `input_ndim` is that of the data set's array: 4 for images (N, C, H, W), 2 for feature vectors (N, D).
    """
    kind = BACKBONES.get(scenario.model.backbone).input_kind
    if (kind == "vectors") != (input_ndim == 2):
        what = "feature vectors (N, D)" if input_ndim == 2 else "images (N, C, H, W)"
        fits = "mlp" if input_ndim == 2 else "convnet, resnet18-cifar or resnet18"
        raise ScenarioError(
            f"backbone {scenario.model.backbone!r} takes {kind}, but data set {scenario.dataset.name!r} gives {what}; use {fits}",
            source=scenario.source,
            key_path="model.backbone",
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(torch_seed(scenario.seed, "model_init"))
        return EmbeddingNet(
            backbone=scenario.model.backbone,
            in_channels=in_channels,
            width=scenario.model.width,
            embedding_dim=scenario.model.embedding_dim,
        )


def build_method(scenario) -> Method:
    """The scenario's method, after checking that the scenario can give it what it needs."""
    cls = METHODS.get(scenario.method.name)
    cls.check(scenario)
    return cls(scenario.method.params)


__all__ = ["BACKBONES", "METHODS", "Batch", "EmbeddingNet", "Method", "TrainContext", "build_method", "build_model"]
