"""benchmarks/gpu_check.py runs on a CUDA machine; on one without CUDA it says so and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO


def test_the_gpu_check_exits_cleanly_without_cuda():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}  # no device, even on a machine that has one
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py")], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no CUDA device" in done.stdout
