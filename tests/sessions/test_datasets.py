"""Data set adapters: on the real copies in the data root, and on small files the tests make."""

from __future__ import annotations

import gzip
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cvstream.errors import DataError
from cvstream.sessions.datasets import DATASETS


def source(name: str, data: Path, cache: Path, **params):
    cls = DATASETS.get(name)
    return cls(cls.Params(**params), data_root=data, cache_dir=cache, seed=0)


def files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


# -- real data ------------------------------------------------------------------------------


@pytest.mark.realdata
def test_fashion_mnist_real(data_root, tmp_path):
    before = files_under(data_root)
    src = source("fashion-mnist", data_root, tmp_path)
    labels = src.label_set()
    assert labels.num_classes == 10 and labels.class_names[9] == "Ankle boot"
    assert len(labels.labels) == 70_000 and labels.test_mask.sum() == 10_000
    assert (np.bincount(labels.labels) == 7_000).all()
    images = src.images()
    assert images.shape == (70_000, 1, 28, 28) and images.dtype == np.uint8
    assert isinstance(images, np.memmap) and 20 < images[:1000].mean() < 120  # decoded pixels, not zeros
    clock = time.perf_counter()
    again = src.images()
    assert time.perf_counter() - clock < 1.0 and np.array_equal(again[:100], images[:100])  # the cache, not a decode
    assert [p.suffix for p in tmp_path.iterdir()] == [".npy"] and files_under(data_root) == before


@pytest.mark.realdata
def test_omniglot_real(data_root, tmp_path):
    src = source("omniglot", data_root, tmp_path, subset="evaluation", image_size=16)
    labels = src.label_set()
    assert labels.num_classes == 659 and len(labels.labels) == 659 * 20 and labels.class_names[0] == "char0964"
    images = src.images()
    assert images.shape == (659 * 20, 1, 16, 16) and images.dtype == np.uint8
    assert images.mean() < 80  # ink is bright on a dark ground


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory):
    from conftest import real_data_root

    root = real_data_root()
    if root is None or not (root / "tiny-imagenet-32").is_dir():
        pytest.skip("no Tiny ImageNet 32 in the data root")
    cache = tmp_path_factory.mktemp("tiny-cache")
    return root, cache, source("tiny-imagenet", root, cache, root="tiny-imagenet-32")


@pytest.mark.realdata
@pytest.mark.slow
def test_tiny_imagenet_real_archive_unpacks_into_the_cache(tiny_imagenet):
    root, cache, src = tiny_imagenet
    before = files_under(root / "tiny-imagenet-32")
    labels = src.label_set()
    assert labels.num_classes == 200 and all(name.startswith("n") for name in labels.class_names)
    assert len(labels.labels) == 110_000 and labels.test_mask.sum() == 10_000
    assert (np.bincount(labels.labels[~labels.test_mask]) == 500).all() and (np.bincount(labels.labels[labels.test_mask]) == 50).all()
    assert labels.file_names[0].startswith("train/") and labels.file_names[-1].startswith("val/images/")
    assert files_under(root / "tiny-imagenet-32") == before  # nothing written next to the archive
    assert (cache / "unpacked").is_dir()
    unpacked = next((cache / "unpacked").iterdir())
    clock = time.perf_counter()
    assert source("tiny-imagenet", root, cache, root="tiny-imagenet-32").label_set().num_classes == 200
    assert time.perf_counter() - clock < 10 and list((cache / "unpacked").iterdir()) == [unpacked]  # unpacked once


@pytest.mark.realdata
@pytest.mark.slow
def test_tiny_imagenet_real_images(tiny_imagenet):
    _, _, src = tiny_imagenet
    images = src.images()
    assert images.shape == (110_000, 3, 32, 32) and images.dtype == np.uint8 and isinstance(images, np.memmap)
    assert images[::1000].std() > 20


# -- small files made here ------------------------------------------------------------------


def write_tiny_imagenet(folder: Path, *, size: int, wnids=("n001", "n002", "n003"), per_class: int = 4) -> None:
    rng = np.random.default_rng(0)
    (folder / "wnids.txt").parent.mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "words.txt").write_text("".join(f"{w}\tthing {w}\n" for w in wnids))
    lines = []
    for c, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(images / f"{wnid}_{k}.JPEG")
        lines.append(f"val_{c}.JPEG\t{wnid}\t0\t0\t1\t1")
    (folder / "val" / "images").mkdir(parents=True)
    for c in range(len(wnids)):
        Image.fromarray(np.full((size, size, 3), 40 * c, dtype=np.uint8)).save(folder / "val" / "images" / f"val_{c}.JPEG")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("as_archive", [False, True])
def test_tiny_imagenet_layout_at_64_pixels(tmp_path, as_archive):
    data, cache = tmp_path / "data", tmp_path / "cache"
    write_tiny_imagenet(data / "staging" / "tiny-imagenet-200", size=64)
    if as_archive:
        with tarfile.open(data / "tiny.tar.gz", "w:gz") as tar:
            tar.add(data / "staging" / "tiny-imagenet-200", arcname="tiny-imagenet-200")
        root = "tiny.tar.gz"
    else:
        root = "staging"  # a parent of the folder that holds wnids.txt
    before = files_under(data)
    src = source("tiny-imagenet", data, cache, root=root)
    labels = src.label_set()
    assert labels.class_names == ("n001", "n002", "n003") and len(labels.labels) == 15 and labels.test_mask.sum() == 3
    assert labels.file_names[4] == "train/n002/images/n002_0.JPEG" and labels.labels[4] == 1
    images = src.images()
    assert images.shape == (15, 3, 64, 64)
    assert abs(int(images[-1].mean()) - 80) <= 3  # val_2 is a flat grey of 80
    small = source("tiny-imagenet", data, cache, root=root, image_size=32).images()
    assert small.shape == (15, 3, 32, 32)
    assert files_under(data) == before  # the archive is unpacked into the cache only
    assert (cache / "unpacked").is_dir() == as_archive


def test_fashion_mnist_plain_idx_and_torchvision_folder(tmp_path):
    rng = np.random.default_rng(1)
    raw = tmp_path / "fm" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)

    def idx(path: Path, array: np.ndarray, gz: bool) -> None:
        header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        payload = header + array.astype(np.uint8).tobytes()
        (gzip.open(str(path) + ".gz", "wb") if gz else open(path, "wb")).write(payload)

    train, test = rng.integers(0, 255, (6, 28, 28)), rng.integers(0, 255, (4, 28, 28))
    idx(raw / "train-images-idx3-ubyte", train, gz=False)
    idx(raw / "train-labels-idx1-ubyte", np.array([0, 1, 2, 3, 4, 9]), gz=True)
    idx(raw / "t10k-images-idx3-ubyte", test, gz=True)
    idx(raw / "t10k-labels-idx1-ubyte", np.array([5, 6, 7, 8]), gz=False)
    src = source("fashion-mnist", tmp_path, tmp_path / "cache", root="fm")
    labels = src.label_set()
    assert labels.labels.tolist() == [0, 1, 2, 3, 4, 9, 5, 6, 7, 8] and labels.test_mask.tolist() == [False] * 6 + [True] * 4
    assert np.array_equal(src.images()[:, 0], np.concatenate([train, test]).astype(np.uint8))
    # A truncated file is named, not a traceback.
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + (4).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\0" * 100))
    with pytest.raises(DataError, match="truncated or corrupt"):
        source("fashion-mnist", tmp_path, tmp_path / "cache2", root="fm").images()


def write_image_folder(root: Path, *, classes=("cat", "dog", "owl"), per_class: int = 5, split: bool | str = False) -> None:
    """One folder per class; `split`: True (train/ + test/) or the name of the query folder beside train/."""
    rng = np.random.default_rng(2)
    query = "test" if split is True else split
    for part in (["train", query] if split else [""]):
        for c, name in enumerate(classes):
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class if part != query else 2):
                size = (20 + 3 * k, 16 + k)  # sizes differ: image_size makes them one
                pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{k:04d}.{'png' if k % 2 else 'jpg'}")


def test_image_folder(tmp_path):
    write_image_folder(tmp_path / "pets")
    src = source("image-folder", tmp_path, tmp_path / "cache", root="pets", image_size=12)
    labels = src.label_set()
    assert labels.class_names == ("cat", "dog", "owl") and labels.test_mask is None
    assert labels.file_names[5] == "dog/0000.jpg" and labels.labels[5] == 1
    images = src.images()
    assert images.shape == (15, 3, 12, 12) and images.dtype == np.uint8
    grey = source("image-folder", tmp_path, tmp_path / "cache", root="pets", image_size=12, channels=1).images()
    assert grey.shape == (15, 1, 12, 12)


def test_image_folder_train_test_layout_and_a_corrupt_image(tmp_path):
    write_image_folder(tmp_path / "pets", split=True)
    labels = source("image-folder", tmp_path, tmp_path / "cache", root="pets").label_set()
    assert labels.test_mask.sum() == 6 and labels.file_names[0] == "train/cat/0000.jpg"
    (tmp_path / "pets" / "train" / "dog" / "0003.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="0003.png"):
        source("image-folder", tmp_path, tmp_path / "cache", root="pets").images()


def test_image_folder_imagenet_layout_train_and_val(tmp_path):
    """root/train/<class>/ and root/val/<class>/ (ImageNet's layout): three classes with a val query split, not two
    classes named train and val."""
    write_image_folder(tmp_path / "inet", split="val")
    labels = source("image-folder", tmp_path, tmp_path / "cache", root="inet").label_set()
    assert labels.class_names == ("cat", "dog", "owl")
    assert labels.test_mask.sum() == 6 and all(labels.file_names[i].startswith("val/") for i in np.flatnonzero(labels.test_mask))
    write_image_folder(tmp_path / "inet", split="test")  # both beside train/: the user says which
    with pytest.raises(DataError, match="both val/ and test/"):
        source("image-folder", tmp_path, tmp_path / "cache", root="inet").label_set()
    chosen = source("image-folder", tmp_path, tmp_path / "cache", root="inet", query_split="test").label_set()
    assert all(chosen.file_names[i].startswith("test/") for i in np.flatnonzero(chosen.test_mask))


def test_image_folder_of_split_names_only_is_refused(tmp_path):
    write_image_folder(tmp_path / "only" / "train")  # root/train/<class>/ with nothing beside it
    with pytest.raises(DataError, match="only the folders train, which are split names"):
        source("image-folder", tmp_path, tmp_path / "cache", root="only").label_set()


def test_features_parquet_and_npy(tmp_path):
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(12, 5)).astype(np.float32)
    names = np.array(["b", "a", "c"] * 4)
    frame = pd.DataFrame({"label": names, "split": ["train"] * 9 + ["test"] * 3, "embedding": list(vectors)})
    frame.to_parquet(tmp_path / "f.parquet")
    src = source("features", tmp_path, tmp_path / "cache", path="f.parquet", feature_column="embedding", split_column="split")
    labels = src.label_set()
    assert labels.class_names == ("a", "b", "c") and labels.labels[:3].tolist() == [1, 0, 2] and labels.test_mask.sum() == 3
    out = src.images()
    assert out.dtype == np.float32 and out.shape == (12, 5) and np.allclose(out, vectors)
    wide = pd.DataFrame(vectors, columns=[f"f{k}" for k in range(5)]).assign(label=np.arange(12) % 4)
    wide.to_parquet(tmp_path / "w.parquet")
    src = source("features", tmp_path, tmp_path / "cache", path="w.parquet")
    assert src.label_set().class_names == ("0", "1", "2", "3") and np.allclose(src.images(), vectors)
    np.save(tmp_path / "v.npy", vectors)
    np.save(tmp_path / "l.npy", np.arange(12) % 3)
    src = source("features", tmp_path, tmp_path / "cache", path="v.npy", labels="l.npy")
    assert src.label_set().num_classes == 3 and np.array_equal(src.images(), vectors)
    np.save(tmp_path / "short.npy", np.arange(5))
    with pytest.raises(DataError, match="do not match"):
        source("features", tmp_path, tmp_path / "cache", path="v.npy", labels="short.npy").images()
    with pytest.raises(DataError, match="dataset.labels"):
        source("features", tmp_path, tmp_path / "cache", path="v.npy").check()


def test_cifar_without_files_or_download_names_what_is_missing(tmp_path):
    src = source("cifar100", tmp_path, tmp_path / "cache")
    with pytest.raises(DataError, match=r"cifar-100-python lacks meta, train, test.*download: true"):
        src.check()
    with pytest.raises(DataError, match="data_batch_1"):
        source("cifar10", tmp_path, tmp_path / "cache").label_set()


def test_cifar10_reads_the_python_archive_layout(tmp_path, monkeypatch):
    """The torchvision reader on tiny made-up batches (its checksums, which these files cannot pass, are bypassed)."""
    import pickle

    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 255, (12, 3 * 32 * 32), dtype=np.uint8)
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    for k, name in enumerate(names):
        batch = {"data": pixels[2 * k : 2 * k + 2], "labels": [k, 9 - k]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"thing{c}" for c in range(10)]}))
    src = source("cifar10", tmp_path, tmp_path / "cache")
    labels = src.label_set()
    assert labels.class_names[3] == "thing3" and labels.labels.tolist()[:4] == [0, 9, 1, 8]
    assert labels.test_mask.tolist() == [False] * 10 + [True] * 2
    images = src.images()
    assert images.shape == (12, 3, 32, 32) and np.array_equal(images.reshape(12, -1), pixels)
