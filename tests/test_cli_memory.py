"""`cvstream` tunes its own process for long runs: glibc's mmap and trim thresholds (unless the user set MALLOC_*),
and oneDNN's primitive caches (unless set)."""

from __future__ import annotations

import ctypes
import os

import pytest

from cvstream import cli


@pytest.fixture
def mallopt_calls(monkeypatch):
    """Record the process's mallopt calls instead of making them; the environment restored afterwards."""
    calls: list[tuple[int, int]] = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    for name in [n for n in os.environ if n.startswith("MALLOC_") or n == "GLIBC_TUNABLES" or n in cli.ONEDNN_CACHES]:
        monkeypatch.delenv(name)
    return calls


def test_glibc_thresholds_and_onednn_caches_are_set_where_the_user_set_nothing(mallopt_calls, monkeypatch):
    if not hasattr(os, "confstr") or "CS_GNU_LIBC_VERSION" not in os.confstr_names:
        pytest.skip("not glibc")
    cli.tune_memory()
    assert mallopt_calls == [(cli.M_MMAP_THRESHOLD, 131072), (cli.M_TRIM_THRESHOLD, 131072)]
    assert [os.environ[name] for name in cli.ONEDNN_CACHES] == ["64", "64"]


def test_the_users_own_settings_win(mallopt_calls, monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "512")
    cli.tune_memory()
    assert mallopt_calls == []  # any MALLOC_* variable: glibc is the user's
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "512" and os.environ["LRU_CACHE_CAPACITY"] == "64"


def test_not_glibc_is_left_alone(mallopt_calls, monkeypatch):
    monkeypatch.setattr(os, "confstr", lambda name: (_ for _ in ()).throw(ValueError("unrecognized configuration name")))
    cli.tune_memory()
    assert mallopt_calls == []
