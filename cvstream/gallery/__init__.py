"""The Faiss gallery and its metadata, the replay buffer, backfill policies."""

from cvstream.gallery.index import Gallery, IndexSpec
from cvstream.gallery.replay import ReplayBuffer, herding

__all__ = ["Gallery", "IndexSpec", "ReplayBuffer", "herding"]
