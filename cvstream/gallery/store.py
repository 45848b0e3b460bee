"""A gallery on disk: its index segments (`gallery-NNNN.faiss`), `gallery.json` and its metadata parts.

`save` writes a Gallery into a folder, each file atomically, and writes again only what changed
since the gallery last saved there or to the folder saved to before it (a file still current
there is linked). `load` reads one back, checking that the files agree with each other. This is
the gallery's own persistence: it reads and sets the Gallery's private state.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import faiss
import numpy as np

from cvstream.errors import UserError
from cvstream.files import atomic_write_bytes, link_or_copy, write_json, write_parquet
from cvstream.gallery.index import Gallery, IndexSpec
from cvstream.gallery.parts import LIST_KEY, PARTS_DIR, changed_since, listed_parts, part_name, read_metadata

FORMAT_VERSION = 2
META_FILE, INFO_FILE = "gallery.parquet", "gallery.json"  # META_FILE: the whole metadata table of older saves
SEGMENT_FILE = re.compile(r"gallery-(\d{4,})\.faiss")


def segment_file(number: int) -> str:
    """The file of one index segment in a saved gallery (a plain Faiss index: `faiss.read_index` reads it)."""
    return f"gallery-{number:04d}.faiss"


def describe(gallery: Gallery) -> dict:
    """The index choice as recorded next to the index: type, parameters, how it was trained, its segments."""
    out = {
        "format_version": FORMAT_VERSION, "dim": gallery.dim, "index": gallery.index_type, "spec": asdict(gallery._spec),
        "trained": gallery._training(),
        "gpu": gallery.gpu, "gpu_error": gallery.gpu_error, "items": len(gallery), "seed": gallery.seed, "hnsw_rebuilds": gallery.rebuilds,
        # A segment narrower than `dim` (written before a model upgrade) says its own dimension.
        "segments": [{"file": segment_file(i), "items": int(s.ntotal), **({"dim": int(s.d)} if s.d != gallery.dim else {})}
                     for i, s in enumerate(gallery.segments)],
    }
    narrower = sorted({int(s.d) for s in gallery.segments} - {gallery.dim})
    if narrower:
        out["narrower"] = [{"dim": d, "trained": gallery._narrower_training.get(d)} for d in narrower]
    return out


def save(gallery: Gallery, folder: str | Path) -> None:
    """Write the segment files, gallery.json and the metadata parts (each atomically) into `folder`.

    What the gallery already wrote and has not changed since is not written again: a file
    still current in `folder` is kept, one current in a folder saved to before (the run's
    own gallery, for a checkpoint) is hard-linked. The metadata is a list of parts
    (`cvstream.gallery.parts`), and a save adds one holding only the rows changed since. A
    session's save thus costs its new segment data and its changed rows, not the gallery.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    here = str(folder.resolve())
    saved = dict(gallery._saved or {})  # folder -> {file name: (version it holds, its inode, size and mtime then)}
    current = {segment_file(i): int(v) for i, v in enumerate(gallery._versions)}
    record: dict[str, tuple] = {}

    def holds_current(where: str, name: str) -> bool:
        """Whether `where/name` is still the file the gallery put there, with the current version."""
        entry = saved.get(where, {}).get(name)
        return entry is not None and entry[0] == current[name] and _signature(Path(where) / name) == entry[1]

    def put(name: str, write) -> None:
        if not holds_current(here, name):
            source = next((Path(f) / name for f in saved if f != here and holds_current(f, name)), None)
            if source is not None:
                link_or_copy(source, folder / name)
            else:
                write(folder / name)
        record[name] = (current[name], _signature(folder / name))

    for number, segment in enumerate(gallery.segments):
        put(segment_file(number), lambda path, segment=segment: atomic_write_bytes(path, faiss.serialize_index(segment).tobytes()))
    for path in folder.glob("gallery-*.faiss"):  # segments of a longer gallery saved here before (a resumed run)
        match = SEGMENT_FILE.fullmatch(path.name)
        if match and int(match.group(1)) >= len(gallery.segments):
            path.unlink()
    record[PARTS_DIR] = _save_parts(gallery, folder, here, saved)
    write_json(folder / INFO_FILE, {**describe(gallery), LIST_KEY: [name for name, _ in record[PARTS_DIR][1]]})
    (folder / META_FILE).unlink(missing_ok=True)  # the whole table of an older save here: the parts replace it
    saved.pop(here, None)
    gallery._saved = {**dict(list(saved.items())[-1:]), here: record}  # this folder and the one saved to before it
    gallery._log_floor = min(entry[PARTS_DIR][0] for entry in gallery._saved.values())
    gallery._metadata_log = [(number, ids) for number, ids in gallery._metadata_log if number > gallery._log_floor]


def _save_parts(gallery: Gallery, folder: Path, here: str, saved: dict) -> tuple[int, list[tuple[str, tuple]]]:
    """Bring `folder`'s metadata parts up to date; returns (the change they hold up to, [(part, its signature)]).

    A folder saved to before gets a part of the rows changed since; a new one, links to the parts of
    the folder saved to before it plus such a part; one that neither can serve, a single part of all rows.
    """
    parts_dir = folder / PARTS_DIR
    parts_dir.mkdir(exist_ok=True)

    def intact(where: str):
        entry = saved.get(where, {}).get(PARTS_DIR)
        if entry is None or entry[0] < gallery._log_floor:
            return None
        return entry if all(_signature(Path(where) / PARTS_DIR / name) == sig for name, sig in entry[1]) else None

    through, parts = intact(here) or (None, [])
    sources = [(entry[0], f, entry[1]) for f in saved if f != here and (entry := intact(f))] if through is None else []
    if sources:  # the most recent one: the fewest rows left to write
        through, source, linked = max(sources)
        for name, _ in linked:
            link_or_copy(Path(source) / PARTS_DIR / name, parts_dir / name)
            parts.append((name, _signature(parts_dir / name)))
    rows = np.arange(len(gallery), dtype=np.int64) if through is None else changed_since(gallery._metadata_log, through)
    if len(rows) or not parts:
        table = gallery.metadata(rows)
        name = part_name(table, {name for name, _ in parts})
        write_parquet(parts_dir / name, table)
        parts = [*parts, (name, _signature(parts_dir / name))]
    keep = {name for name, _ in parts}
    for path in parts_dir.glob("*.parquet"):  # parts of an earlier save here that the list no longer holds
        if path.name not in keep:
            path.unlink()
    return gallery._changes, parts


def load(folder: str | Path, *, class_sums: tuple[np.ndarray, np.ndarray] | None = None) -> Gallery:
    """Read a gallery saved by `save`; a mismatch between its files is a UserError.

    `class_sums`, the (sums, counts) that `Gallery.class_sums()` gave when it was saved, are taken
    as they are (a checkpoint's: exactly the saving run's rounding, and no pass over the
    stored vectors); without them the sums are recomputed from the stored vectors.
    """
    folder = Path(folder)
    if not (folder / INFO_FILE).is_file():
        raise UserError(f"{folder}: no saved gallery ({INFO_FILE} missing)")
    try:
        info = json.loads((folder / INFO_FILE).read_text())
        parts = listed_parts(info) if isinstance(info, dict) else None
    except (OSError, ValueError, UserError) as exc:
        raise UserError(f"{folder / INFO_FILE}: the saved gallery cannot be read ({exc})") from None
    meta_files = [META_FILE] if parts is None else [f"{PARTS_DIR}/{name}" for name in parts]
    missing = [name for name in meta_files if not (folder / name).is_file()]
    if missing:
        raise UserError(f"{folder}: no saved gallery ({', '.join(missing)} missing)")
    meta_name = META_FILE if parts is None else f"{PARTS_DIR}/"
    if not isinstance(info, dict) or info.get("format_version") != FORMAT_VERSION:
        version = info.get("format_version") if isinstance(info, dict) else None
        raise UserError(f"{folder / INFO_FILE}: gallery format {version}, expected {FORMAT_VERSION} (saved by another cvstream)")
    entries = info.get("segments", [])
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise UserError(f"{folder / INFO_FILE}: the saved gallery cannot be read (its segment list is malformed)")
    files = [str(entry.get("file", "")) for entry in entries]
    missing = [name for name in files if not SEGMENT_FILE.fullmatch(name) or not (folder / name).is_file()]
    if missing:
        raise UserError(f"{folder}: no saved gallery ({', '.join(missing)} missing)")
    reading = INFO_FILE
    try:
        gallery = Gallery(int(info["dim"]), IndexSpec(**info["spec"]), seed=int(info.get("seed", 0)))
        dims = [int(entry.get("dim", gallery.dim)) for entry in entries]
        for narrower in info.get("narrower", []):
            gallery._narrower_training[int(narrower["dim"])] = narrower.get("trained")
        for dim in sorted(set(dims) - {gallery.dim}):
            if not 0 < dim < gallery.dim:
                raise ValueError(f"a segment of {dim} dimensions in a gallery of {gallery.dim}")
            gallery._templates[dim] = gallery._factory(dim, gallery.spec)
        reading = meta_name
        meta = read_metadata(folder, parts)
        segments = []
        for reading in files:
            segments.append(faiss.deserialize_index(np.fromfile(folder / reading, dtype=np.uint8)))
    except Exception as exc:  # pyarrow, Faiss and pydantic raise many types for a damaged file
        raise UserError(f"{folder / reading}: the saved gallery cannot be read ({type(exc).__name__}: {exc})") from None
    problems = _check_segments(gallery, segments, files, dims)
    total = sum(int(s.ntotal) for s in segments)
    if total != len(meta):
        problems.append(f"the index segments hold {total} vectors but {meta_name} lists {len(meta)} items")
    if not np.array_equal(meta["item_id"].to_numpy(dtype=np.int64), np.arange(len(meta), dtype=np.int64)):
        problems.append(f"{meta_name}: item ids are not 0..{len(meta) - 1} in order")
    if int(info.get("items", len(meta))) != len(meta):
        problems.append(f"{INFO_FILE} says {info.get('items')} items, {meta_name} lists {len(meta)}")
    if problems:
        raise UserError(f"{folder}: the saved gallery does not match its metadata: " + "; ".join(problems))
    gallery._adopt(segments)
    trained = info.get("trained") or {}
    gallery.trained_session, gallery.trained_vectors = int(trained.get("session", -1)), int(trained.get("vectors", 0))
    gallery.rebuilds = int(info.get("hnsw_rebuilds", 0))
    gallery.gpu_error = str(info.get("gpu_error", ""))
    gallery.gpu = gallery.gpu and not gallery.gpu_error  # a GPU index that failed once is not tried again

    def ints(column: str) -> np.ndarray:
        return meta[column].astype("Int64").fillna(-1).to_numpy(dtype=np.int64)

    gallery._sample_ids.extend(ints("sample_id"))
    gallery._class_ids.extend(ints("class_id"))
    gallery._session_added.extend(ints("session_added"))
    gallery._generation.extend(ints("generation"))
    gallery._backfilled_at.extend(ints("backfilled_at"))
    gallery._transformed_at.extend(ints("transformed_at") if "transformed_at" in meta else np.full(len(meta), -1, np.int64))
    if class_sums is not None:
        _take_class_sums(gallery, *class_sums)
    elif len(meta):
        gallery._accumulate(ints("class_id"), gallery.vectors(np.arange(len(meta), dtype=np.int64)), sign=1)
    return gallery


def _check_segments(gallery: Gallery, segments: list[faiss.Index], names: list[str], dims: list[int]) -> list[str]:
    """What is wrong with deserialised segments for their dimensions (`dims`, as gallery.json lists them), this
    gallery's backend and segment size (with one dimension, every segment but the last is full)."""
    kind = type(gallery._template)
    one_dimension = len(set(dims)) == 1
    problems = []
    for number, (segment, name, dim) in enumerate(zip(segments, names, dims)):
        if segment.d != dim:
            problems.append(f"{name} holds {segment.d}-d vectors, {INFO_FILE} says {dim}")
        elif not isinstance(segment, kind) or segment.metric_type != faiss.METRIC_INNER_PRODUCT:
            problems.append(f"{name} is a {type(segment).__name__}, not the inner-product {gallery.index_type} index {INFO_FILE} names")
        elif isinstance(segment, faiss.IndexIVF) and segment.nlist != gallery._template.nlist:
            problems.append(f"{name} has {segment.nlist} inverted lists, {INFO_FILE} says nlist = {gallery._template.nlist}")
        elif one_dimension and number < len(segments) - 1 and segment.ntotal != gallery.segment_size or segment.ntotal > gallery.segment_size:
            problems.append(f"{name} holds {segment.ntotal} items; segments hold {gallery.segment_size}, the last one at most that")
    return problems


def _take_class_sums(gallery: Gallery, sums: np.ndarray, counts: np.ndarray) -> None:
    """Take running sums saved with the gallery, once its items are in: counts must be its class counts."""
    sums, counts = np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.int64)
    held = gallery._class_ids.values
    expected = np.bincount(held, minlength=int(held.max()) + 1 if len(held) else 0)
    if sums.shape != (len(counts), gallery.dim) or not np.array_equal(counts, expected):
        raise UserError("the saved class sums do not match the saved gallery; the run cannot be resumed")
    gallery._class_sum, gallery._class_count = sums.copy(), counts.copy()


def _signature(path: Path) -> tuple[int, int, int] | None:
    """Inode, size and modification time: what tells that a file is still the one written."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns
