"""Training methods behind a registry: a name in a scenario maps to one class, one file each."""

from cvstream.models.methods.base import METHODS, NEEDS, Batch, Method, TrainContext

# Registration happens on import.
from cvstream.models.methods import bct, cvs, finetune, joint, l2, lwf, mixbct  # noqa: E402,F401
from cvstream.models.methods import advbct, bt2, frozen, m2sd, nccl, unibct  # noqa: E402,F401

__all__ = ["METHODS", "NEEDS", "Batch", "Method", "TrainContext"]
