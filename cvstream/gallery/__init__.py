"""The Faiss gallery and its metadata, the replay buffer, backfill policies."""

from cvstream.gallery.index import Gallery
from cvstream.gallery.replay import ReplayBuffer, herding

__all__ = ["Gallery", "ReplayBuffer", "herding"]
