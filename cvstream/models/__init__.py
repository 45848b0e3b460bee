"""Backbones, heads, losses, methods, and the trainer of one session."""

from __future__ import annotations

import torch

from cvstream.errors import ScenarioError
from cvstream.models.backbones import BACKBONES
from cvstream.models.methods import METHODS, Batch, Method, TrainContext
from cvstream.models.net import EmbeddingNet
from cvstream.sessions.rng import torch_generator, torch_seed


def build_model(
    scenario, *, in_channels: int, input_ndim: int = 4, input_stats: tuple[list[float], list[float]] | None = None
) -> EmbeddingNet:
    """A fresh network, initialised from the scenario seed without touching the global RNG.

    `input_ndim` is that of the data set's array: 4 for images (N, C, H, W), 2 for feature vectors (N, D);
    `input_stats` the data set's per-channel pixel (mean, std), for `training.input_scaling: mean-std`.
    The networks of `model.upgrades` must take the same inputs: they are checked here, before any work.
    """
    for key_path, spec in [("model", scenario.model), *((f"model.upgrades.{t}", u) for t, u in sorted(scenario.model.upgrades.items()))]:
        kind = BACKBONES.get(spec.backbone).input_kind
        if (kind == "vectors") != (input_ndim == 2):
            what = "feature vectors (N, D)" if input_ndim == 2 else "images (N, C, H, W)"
            fits = " or ".join(n for n in BACKBONES.names() if (BACKBONES.get(n).input_kind == "vectors") == (input_ndim == 2))
            raise ScenarioError(
                f"backbone {spec.backbone!r} takes {kind}, but data set {scenario.dataset.name!r} gives {what}; use {fits}",
                source=scenario.source,
                key_path=f"{key_path}.backbone",
            )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(torch_seed(scenario.training_seed, "model_init"))
        return EmbeddingNet(
            backbone=scenario.model.backbone,
            in_channels=in_channels,
            width=scenario.model.width,
            embedding_dim=scenario.model.embedding_dim,
            input_stats=input_stats if scenario.training.input_scaling == "mean-std" else None,
        )


def upgraded_model(scenario, spec, *, previous: EmbeddingNet, session: int, head: dict | None = None) -> EmbeddingNet:
    """The network a model upgrade builds at `session` (SPEC section 12): from scratch with `spec` (a NetworkSpec),
    seeded by the session, on `previous`'s device, its classifier already holding a fresh row for every class
    `previous` knows (in the same order); `head` is the method's embedding head (`Method.upgrade_head`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(torch_seed(scenario.training_seed, "model_init", session))
        model = EmbeddingNet(
            backbone=spec.backbone, in_channels=previous.spec["in_channels"], width=spec.width, embedding_dim=spec.embedding_dim, head=head,
            input_stats=previous.spec.get("input_stats"),
        )
    model = model.to(previous.weight.device)
    model.add_classes(previous.class_ids.cpu(), torch_generator(scenario.training_seed, "upgrade_rows", session), init=scenario.training.classifier_init)
    return model


def build_method(scenario) -> Method:
    """The scenario's method, after checking that the scenario can give it what it needs."""
    cls = METHODS.get(scenario.method.name)
    cls.check(scenario)
    method = cls(scenario.method.params)
    _check_upgrades(scenario, method)
    return method


def _check_upgrades(scenario, method: Method) -> None:
    """What keeps a method from training across `model.upgrades` (SPEC section 12), as a ScenarioError."""
    upgrades = scenario.model.upgrades
    if not upgrades:
        return
    for session in sorted(upgrades):
        if not method.trains(session):
            raise ScenarioError(
                f"{scenario.method.name} takes no training step at session {session}, so the network that model.upgrades builds "
                "there from scratch would never be trained; drop the upgrade or choose a method that trains every session",
                source=scenario.source, key_path=f"model.upgrades.{session}",
            )
    if scenario.training.epochs == 0:
        raise ScenarioError(
            "training.epochs = 0: the networks of model.upgrades would never be trained", source=scenario.source, key_path="training.epochs"
        )


__all__ = ["BACKBONES", "METHODS", "Batch", "EmbeddingNet", "Method", "TrainContext", "build_method", "build_model", "upgraded_model"]
