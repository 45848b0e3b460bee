"""Memory figures: every session_end event carries them, and the gallery's bytes are estimated without a copy."""

from __future__ import annotations

import json
import time

import faiss
import numpy as np
import pytest

from cvstream.gallery import Gallery
from cvstream.scenario import GallerySpec
from cvstream.simulator import Simulator
from cvstream.simulator.memory import gallery_bytes, index_bytes, peak_rss_bytes, reset_peak, rss_bytes
from conftest import tiny_scenario


def test_session_end_events_record_memory_cpu_time_and_the_gallery_grows():
    cpu = time.process_time()
    result = Simulator(tiny_scenario(evaluation={"probe_items": 8}), write=False).run()
    cpu = time.process_time() - cpu
    ends = [json.loads(d) for d in result.events.query("kind == 'session_end'").detail]
    assert len(ends) == 3
    for d in ends:
        assert d["peak_rss_bytes"] >= d["rss_bytes"] > 10 * 2**20
        assert d["cpu_seconds"] > 0
    assert ends[0]["gallery_bytes"] < ends[-1]["gallery_bytes"]
    assert sum(d["cpu_seconds"] for d in ends) <= cpu  # each session's own share of what the run took


def test_peak_resets_to_the_current_size():
    if not reset_peak():
        pytest.skip("this kernel has no /proc/self/clear_refs")
    block = np.ones(50 * 2**20 // 8)  # 50 MiB, touched
    high = peak_rss_bytes()
    del block
    reset_peak()
    assert peak_rss_bytes() < high - 30 * 2**20
    assert abs(peak_rss_bytes() - rss_bytes()) < 20 * 2**20


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw"])
def test_index_bytes_is_close_to_the_serialised_size(kind):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    gallery = Gallery(32, GallerySpec(index=kind, nlist=16, pq_m=8, pq_bits=6), seed=0)
    gallery.add(x, sample_ids=np.arange(3000), class_ids=np.arange(3000) % 7, session=0, generation=0)
    segment = gallery.segments[0]
    shared = gallery.quantizer.ntotal * 32 * 4 if gallery.quantizer is not None else 0  # written with the segment, held once
    serialised = len(faiss.serialize_index(segment)) - shared
    assert 0.6 * serialised < index_bytes(segment) < 1.4 * serialised
    assert gallery_bytes(gallery) > index_bytes(segment)
