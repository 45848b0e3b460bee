"""Mixed precision on the CPU: detected from the CPU's flags, bfloat16 autocast and channels-last where it is on,
float32 and the old layout where `training.amp` is off or the CPU lacks bfloat16."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from cvstream.models import trainer
from cvstream.models.methods import METHODS, TrainContext
from cvstream.models.net import EmbeddingNet
from cvstream.models.trainer import amp_active, cpu_has_bf16, embed, train_session
from cvstream.scenario import TrainingSpec

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def cpuinfo(monkeypatch):
    """Pretend /proc/cpuinfo holds the given flags (the detection is cached: cleared before and after)."""
    real_open = open

    def fake(flags: str):
        trainer.cpu_has_bf16.cache_clear()
        text = f"processor\t: 0\nflags\t\t: fpu sse2 {flags}\n\nprocessor\t: 1\nflags\t\t: fpu sse2 {flags}\n"
        monkeypatch.setattr("builtins.open", lambda path, *a, **k: io.StringIO(text) if path == "/proc/cpuinfo" else real_open(path, *a, **k))

    yield fake
    monkeypatch.undo()
    trainer.cpu_has_bf16.cache_clear()


@pytest.mark.parametrize("flags, native", [("avx2 avx512f", False), ("avx512f avx512_bf16", True), ("amx_tile amx_bf16", True), ("", False)])
def test_native_bfloat16_is_read_from_the_cpu_flags(cpuinfo, flags, native):
    cpuinfo(flags)
    assert cpu_has_bf16() is (native and torch.backends.mkldnn.is_available())
    assert amp_active(CPU, True) is cpu_has_bf16()
    assert not amp_active(CPU, False)  # training.amp off: float32 everywhere
    assert amp_active(CUDA, True) and not amp_active(CUDA, False)  # CUDA: the flags do not matter


def _convnet() -> EmbeddingNet:
    torch.manual_seed(0)
    model = EmbeddingNet(backbone="convnet", in_channels=3, width=4, embedding_dim=8)
    model.add_classes(list(range(4)), torch.Generator().manual_seed(0))
    return model


def _images(n=48):
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (n, 3, 16, 16), dtype=np.uint8))


def _train(model, images, *, amp: bool):
    finetune = METHODS.get("finetune")(METHODS.get("finetune").Params())
    return train_session(
        model=model, method=finetune, images=images, sample_ids=np.arange(len(images)), class_ids=np.arange(len(images)) % 4,
        context=TrainContext(session=0), spec=TrainingSpec(epochs=1, batch_size=16, lr=0.05, warmup_epochs=0, amp=amp),
        generator=torch.Generator().manual_seed(1), augment_images=False, flip=False,
    )


def _conv_weights(model):
    return [p for p in model.parameters() if p.dim() == 4]


def test_without_native_bfloat16_the_cpu_trains_in_float32_and_the_old_layout(cpuinfo):
    cpuinfo("avx2")
    model, images = _convnet(), _images()
    stats = _train(model, images, amp=True)
    assert stats.steps == 3
    assert all(p.is_contiguous() for p in _conv_weights(model))
    again = _convnet()
    _train(again, images, amp=False)
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)  # amp on a CPU without bfloat16 is exactly float32


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bfloat16")
def test_with_native_bfloat16_training_and_embedding_run_under_autocast_in_channels_last():
    images = _images()
    mixed, full = _convnet(), _convnet()
    _train(mixed, images, amp=True)
    _train(full, images, amp=False)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in _conv_weights(mixed))
    assert all(p.is_contiguous() for p in _conv_weights(full))
    ids = np.arange(len(images))
    a, b = embed(mixed, images, ids, batch_size=20, amp=True), embed(mixed, images, ids, batch_size=20, amp=False)
    assert a.dtype == np.float32 and a.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert 0 < np.abs(a - b).max() < 0.05  # bfloat16 rounding: different, and close
    with torch.no_grad():
        flat = lambda model: torch.cat([p.flatten() for p in model.parameters()])  # noqa: E731
        apart, trained = (flat(mixed) - flat(full)).norm(), (flat(full) - flat(_convnet())).norm()
    assert 0 < apart < 0.5 * trained  # the same three steps, rounded differently: far less apart than the steps moved
