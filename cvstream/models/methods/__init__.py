"""Training methods behind a registry: a name in a scenario maps to one class, one file each."""

from cvstream.models.methods.base import METHODS, Batch, Method, TrainContext

# Registration happens on import.
from cvstream.models.methods import cvs, finetune  # noqa: E402,F401

__all__ = ["METHODS", "Batch", "Method", "TrainContext"]
