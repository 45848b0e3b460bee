"""A session of cvstream against a plain PyTorch loop in the official CVS code's style, same images and model.

    python benchmarks/official_style.py [--classes 8] [--per-class 80] [--epochs 1] [--workers 1] [--threads 1]

The stand-in for the official code (ivclab/CVS `train.py` with `loader/tinyimagenet.py`, not the code
itself): a Dataset that opens and decodes each JPEG with PIL per sample, the official train transforms
(Resize 64, RandomCrop 64 pad 4, horizontal flip, RandAugment -- torchvision's, where the official code
uses the `randaugment` package -- ToTensor, Normalize), a DataLoader with `--workers` worker processes
(the official `--kernels 1`), batch 64, shuffle, drop_last; the same network (cvstream's `resnet18`),
the same SGD and loss (finetune: the cosine classifier's cross-entropy), float32. After training it
embeds the session's gallery and queries through the same loader without augmentation (decoded
again) and measures R@1. cvstream runs the same session (`finetune`, one session of a disjoint stream
over an `image-folder` of the same files, decoded once) with its defaults: bfloat16 autocast where the
CPU has it, channels-last. Time: CPU seconds of the process and its DataLoader workers (user + sys);
with one torch thread on each side, other work on a shared machine does not count against either.

Images: the first `--classes` classes of Tiny-ImageNet-32 (`tiny-imagenet-32/tiny-imagenet-32.tar.gz`
under the data root, `$CVSTREAM_DATA` or ../shared/data), `--per-class` JPEGs each; without it,
synthetic images written as JPEG (quality 90).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cpu_precision import cpu_description  # noqa: E402
from cvstream.models import build_model  # noqa: E402
from cvstream.scenario import Scenario  # noqa: E402
from cvstream.simulator import Hook, Simulator  # noqa: E402

ARCHIVE = "tiny-imagenet-32/tiny-imagenet-32.tar.gz"
MEAN, STD = (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)  # the official get_statistics('TinyImagenet')


def cpu_seconds() -> float:
    """User + sys seconds of this process and of its children that have ended (DataLoader workers, once joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def data_root() -> Path:
    return Path(os.environ.get("CVSTREAM_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def prepare_images(folder: Path, *, classes: int, per_class: int) -> str:
    """`folder/<class>/<file>.JPEG`: real Tiny-ImageNet-32 images where the archive is, else synthetic ones."""
    if folder.is_dir() and any(folder.iterdir()):
        return "prepared before"
    archive = data_root() / ARCHIVE
    if archive.is_file():
        wanted: dict[str, int] = {}
        with tarfile.open(archive) as tar:
            for member in tar:
                parts = Path(member.name).parts
                if len(parts) != 4 or parts[0] != "train" or not member.isfile():  # train/<wnid>/images/<file>
                    continue
                wnid = parts[1]
                if wnid not in wanted and len(wanted) >= classes or wanted.get(wnid, 0) >= per_class:
                    continue
                wanted[wnid] = wanted.get(wnid, 0) + 1
                (folder / wnid).mkdir(parents=True, exist_ok=True)
                (folder / wnid / parts[3]).write_bytes(tar.extractfile(member).read())
                if len(wanted) >= classes and all(n >= per_class for n in wanted.values()):
                    break
        return f"Tiny-ImageNet-32 ({archive})"
    from PIL import Image

    rng = np.random.default_rng(0)
    centres = rng.integers(0, 256, (classes, 4, 4, 3))
    for c in range(classes):
        (folder / f"class{c:03d}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            small = np.clip(centres[c] + rng.normal(0, 40, (4, 4, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(small).resize((32, 32), Image.BILINEAR)
            image.save(folder / f"class{c:03d}" / f"{i:04d}.JPEG", quality=90)
    return "synthetic (no Tiny-ImageNet-32 archive under the data root)"


def scenario(folder: Path, *, epochs: int, amp: bool = True, size: int = 64) -> Scenario:
    return Scenario.from_dict({
        "name": "official-style", "seed": 1, "device": "cpu",
        "dataset": {"name": "image-folder", "root": str(folder), "image_size": size, "channels": 3},
        "stream": {"setup": "disjoint", "sessions": 1, "initial_classes": len(list(folder.iterdir())),
                   "classes_per_session": 1, "query_fraction": 0.2},
        "model": {"backbone": "resnet18", "embedding_dim": 128},
        "training": {"epochs": epochs, "batch_size": 64, "lr": 0.03, "warmup_epochs": 0, "amp": amp},
        "method": {"name": "finetune"},
        "replay": {"size": 0},
        "evaluation": {"recall_at": [1], "map_at_r": False, "probe_items": 0},
    })


class SessionClock(Hook):
    """CPU seconds from the session's first step to its end (the data set was decoded before, once per run)."""

    started: float | None = None

    def before_session(self, sim, session: int) -> None:
        if self.started is None:
            self.started = cpu_seconds()

    def after_session(self, sim, result) -> None:
        self.seconds = cpu_seconds() - self.started


def cvstream_session(folder: Path, *, epochs: int, amp: bool = True, size: int = 64) -> dict:
    clock = SessionClock()
    started = cpu_seconds()
    sim = Simulator(scenario(folder, epochs=epochs, amp=amp, size=size), write=False, hooks=[clock])
    result = sim.run()
    total = cpu_seconds() - started
    r1 = result.metrics.query("metric == 'recall@1' and subset == 'all' and gallery_view == 'mixed'").value.item()
    return {"seconds": clock.seconds, "with_setup": total, "r1": r1, "sim": sim}


class Files(torch.utils.data.Dataset):
    """The official loader's way: open and decode one JPEG per item, then the transforms."""

    def __init__(self, paths: list[Path], labels: np.ndarray, transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB")), int(self.labels[i])


def official_session(folder: Path, sim: Simulator, *, epochs: int, workers: int) -> dict:
    """The plain loop on the same session's files: train, then embed gallery and queries, R@1."""
    from torchvision import transforms

    s = sim.scenario
    session = sim.stream[0]
    names = sim.label_set.file_names
    paths = [folder / name for name in names]
    labels = sim.label_set.labels
    train = transforms.Compose([
        transforms.Resize((64, 64)), transforms.RandomCrop(64, padding=4), transforms.RandomHorizontalFlip(),
        transforms.RandAugment(), transforms.ToTensor(), transforms.Normalize(MEAN, STD),
    ])
    plain = transforms.Compose([transforms.Resize((64, 64)), transforms.ToTensor(), transforms.Normalize(MEAN, STD)])

    def loader(ids, transform, *, shuffle: bool, batch: int):
        data = Files([paths[i] for i in ids], labels[ids], transform)
        return torch.utils.data.DataLoader(data, batch_size=batch, shuffle=shuffle, drop_last=shuffle, num_workers=workers,
                                           generator=torch.Generator().manual_seed(0))

    started = cpu_seconds()
    model = build_model(s, in_channels=3)
    model.add_classes(session.new_classes, torch.Generator().manual_seed(0))
    spec = s.training
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum, nesterov=True, weight_decay=spec.weight_decay)
    temperature = s.method.params.temperature
    for _ in range(epochs):
        model.train()
        for x, y in loader(session.train_ids, train, shuffle=True, batch=spec.batch_size):
            loss = F.cross_entropy(model.cosine(model(x)) / temperature, model.rows_of(y))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    @torch.no_grad()
    def embed(ids) -> np.ndarray:
        model.eval()
        return torch.cat([F.normalize(model(x), dim=1) for x, _ in loader(ids, plain, shuffle=False, batch=100)]).numpy()

    gallery, queries = embed(session.gallery_ids), embed(session.query_ids)
    nearest = np.argmax(queries @ gallery.T, axis=1)
    r1 = float(np.mean(labels[session.gallery_ids][nearest] == labels[session.query_ids]))
    return {"seconds": cpu_seconds() - started, "r1": r1}


def compare(*, classes: int, per_class: int, epochs: int, workers: int, work: Path | None = None, native: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(work or tmp)
        folder = base / "images"
        source = prepare_images(folder, classes=classes, per_class=per_class)
        os.environ.setdefault("CVSTREAM_CACHE", str(base / "derived"))  # the decoded copy, not in ~/.cache
        cvstream_session(folder, epochs=epochs)  # warm-up: imports, the decoded cache, oneDNN's kernels
        ours = cvstream_session(folder, epochs=epochs)
        theirs = official_session(folder, ours.pop("sim"), epochs=epochs, workers=workers)
        if native:  # the images at the size they are stored (32x32), not upsampled to 64x64 as the official code does
            cvstream_session(folder, epochs=epochs, size=32)
            small = cvstream_session(folder, epochs=epochs, size=32)
            small.pop("sim")
    result = {"source": source, "classes": classes, "per_class": per_class, "epochs": epochs, "workers": workers,
              "cvstream": ours, "official_style": theirs, "ratio": theirs["seconds"] / ours["seconds"]}
    if native:
        result |= {"cvstream_32": small, "ratio_32": theirs["seconds"] / small["seconds"]}
    return result


def describe(result: dict) -> str:
    ours, theirs = result["cvstream"], result["official_style"]
    return (f"{result['classes']} classes x {result['per_class']} images ({result['source']}), {result['epochs']} epoch(s), "
            f"{result['workers']} loader worker(s): official-style loop {theirs['seconds']:.1f} s CPU (R@1 {theirs['r1']:.3f}), "
            f"cvstream session {ours['seconds']:.1f} s CPU (R@1 {ours['r1']:.3f}; with decoding the set once {ours['with_setup']:.1f} s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--per-class", type=int, default=80)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--native-size", action="store_true",
                        help="also run cvstream on the 32x32 images as stored, not upsampled to 64x64 (another setting, reported apart)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(cpu_description(), flush=True)
    result = compare(classes=args.classes, per_class=args.per_class, epochs=args.epochs, workers=args.workers, native=args.native_size)
    print(describe(result))
    print(f"session time, official-style loop / cvstream: {result['ratio']:.2f} "
          "(run.py's (d) divides it by this CPU's float32 / bfloat16 step ceiling)")
    if args.native_size:
        small = result["cvstream_32"]
        print(f"cvstream at 32x32, not upsampled (not the official setting): {small['seconds']:.1f} s CPU, R@1 {small['r1']:.3f}; "
              f"official-style loop at 64x64 / this: {result['ratio_32']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
