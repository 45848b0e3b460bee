"""A gallery on disk: its index segments (`gallery-NNNN.faiss`) and their deltas, `gallery.json` and its metadata parts.

`save` writes a Gallery into a folder, each file atomically, and writes again only what changed
since the gallery last saved there or to the folder saved to before it (a file still current
there is linked). A segment that only grew since its file was written keeps that file and gets
a delta, `gallery-NNNN-delta-KKKK.npz`, of the items added since; it is written whole again when
it changed otherwise (a replace, an hnsw rebuild, a widening), when its deltas would hold more
items than its file or number `MAX_DELTAS`, and always for hnsw (below). So a session's save
costs its new items, not the open segment. `load` reads one back, each segment's file and then
its deltas in order, checking that the files agree with each other. This is the gallery's own
persistence: it reads and sets the Gallery's private state.

A delta is an `np.savez` archive of `start` (the segment position of its first item) and `codes`:
those items' Faiss standalone codes, copied as stored (flat: the float32 vectors' bytes; ivf and
ivfpq: the inverted list number, then the list entry), which `add_sa_codes` appends to the
segment read back, giving the same segment byte for byte. gallery.json lists each segment file
and delta with its size and CRC-32, so that one truncated, damaged, missing or left by another
save (one killed before it wrote gallery.json) is refused at load. An hnsw segment
has none: a graph grown by the same vectors after a load is another graph (Faiss does not save
the generator that draws the new nodes' levels), and its additions also relink old nodes.
"""

from __future__ import annotations

import io
import json
import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from cvstream.errors import UserError
from cvstream.files import atomic_write_bytes, link_or_copy, write_json, write_parquet
from cvstream.gallery.index import Gallery, IndexSpec, _stored
from cvstream.gallery.parts import LIST_KEY, PARTS_DIR, changed_since, listed_parts, part_name, read_metadata

FORMAT_VERSION = 3  # 3: segments with deltas; 2 (still read): none
READABLE_VERSIONS = (2, 3)
META_FILE, INFO_FILE = "gallery.parquet", "gallery.json"  # META_FILE: the whole metadata table of older saves
SEGMENT_FILE = re.compile(r"gallery-(\d{4,})\.faiss")
DELTA_FILE = re.compile(r"gallery-(\d{4,})-delta-(\d{4,})\.npz")
MAX_DELTAS = 256  # per segment: bounds the files a load opens and the entries gallery.json lists


def segment_file(number: int) -> str:
    """The file of one index segment in a saved gallery (a plain Faiss index: `faiss.read_index` reads it)."""
    return f"gallery-{number:04d}.faiss"


def delta_file(number: int, delta: int) -> str:
    """The file of a segment's `delta`-th delta (from 1): the items added to it since its file and earlier deltas."""
    return f"gallery-{number:04d}-delta-{delta:04d}.npz"


@dataclass(frozen=True)
class Delta:
    """One delta file as gallery.json lists it: the segment's items at positions start .. start + items - 1."""

    file: str
    start: int
    items: int
    bytes: int
    crc32: int


@dataclass(frozen=True)
class _Held:
    """One segment as a folder holds it: its file (`base_items`, its size and CRC-32 in `base`) and deltas (`signatures`:
    of each, the file first), making up the gallery's `version` of the segment."""

    version: int
    base_items: int
    base: tuple[int, int]
    deltas: tuple[Delta, ...]
    signatures: tuple

    @property
    def items(self) -> int:
        return self.base_items + sum(delta.items for delta in self.deltas)

    def files(self, number: int) -> list[str]:
        return [segment_file(number), *(delta.file for delta in self.deltas)]


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
    own gallery, for a checkpoint) is hard-linked, and a segment that only grew since gets a
    delta of its new items. The metadata is a list of parts (`cvstream.gallery.parts`), and a
    save adds one holding only the rows changed since. A session's save thus costs its new
    items and its changed rows, not the gallery (nor the open segment, but where it is
    written whole again: see the module's docstring).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    here = str(folder.resolve())
    saved = dict(gallery._saved or {})  # folder -> {segment file: _Held, PARTS_DIR: (change, [(part, signature)])}
    held = [_save_segment(gallery, number, folder, here, saved) for number in range(len(gallery.segments))]
    record: dict[str, object] = {segment_file(number): entry for number, entry in enumerate(held)}
    record[PARTS_DIR] = _save_parts(gallery, folder, here, saved)
    info = describe(gallery)
    for entry, its in zip(info["segments"], held):
        entry["bytes"], entry["crc32"] = its.base
        if its.deltas:
            entry["deltas"] = [asdict(delta) for delta in its.deltas]
    write_json(folder / INFO_FILE, {**info, LIST_KEY: [name for name, _ in record[PARTS_DIR][1]]})
    # Only once gallery.json lists the new files: segments of a longer gallery saved here before (a resumed run) and
    # deltas that a segment written whole replaced. A save killed before this leaves the old list, and its files.
    listed = {name for number, its in enumerate(held) for name in its.files(number)}
    for path in folder.glob("gallery-*"):
        if (SEGMENT_FILE.fullmatch(path.name) or DELTA_FILE.fullmatch(path.name)) and path.name not in listed:
            path.unlink()
    (folder / META_FILE).unlink(missing_ok=True)  # the whole table of an older save here: the parts replace it
    saved.pop(here, None)
    gallery._saved = {**dict(list(saved.items())[-1:]), here: record}  # this folder and the one saved to before it
    gallery._log_floor = min(entry[PARTS_DIR][0] for entry in gallery._saved.values())
    gallery._metadata_log = [(number, ids) for number, ids in gallery._metadata_log if number > gallery._log_floor]


def _save_segment(gallery: Gallery, number: int, folder: Path, here: str, saved: dict) -> _Held:
    """Bring segment `number` up to date in `folder`: keep it, link it from the folder saved to before, add a delta of
    its new items (to what this folder or that one holds), or write it whole; returns what `folder` then holds."""
    name, segment, version = segment_file(number), gallery.segments[number], int(gallery._versions[number])
    held = {where: entry for where in sorted(saved, key=lambda where: where != here)  # this folder first
            if (entry := saved[where].get(name)) is not None and _intact(entry, Path(where), number)}
    for where, entry in held.items():
        if entry.version == version:
            return entry if where == here else _linked(entry, Path(where), folder, number)
    for where, entry in held.items():
        added = int(segment.ntotal) - entry.items
        extendable = (entry.version >= gallery._rewritten[number] and added > 0 and len(entry.deltas) < MAX_DELTAS
                      and entry.items - entry.base_items + added <= entry.base_items)
        if extendable and (codes := _added_codes(segment, entry.items)) is not None:
            if where != here:
                entry = _linked(entry, Path(where), folder, number)
            buffer = io.BytesIO()
            np.savez(buffer, start=np.int64(entry.items), codes=codes)
            data = buffer.getvalue()
            delta = Delta(delta_file(number, len(entry.deltas) + 1), entry.items, len(codes), len(data), zlib.crc32(data))
            atomic_write_bytes(folder / delta.file, data)
            return _Held(version, entry.base_items, entry.base, (*entry.deltas, delta), (*entry.signatures, _signature(folder / delta.file)))
    data = faiss.serialize_index(segment).tobytes()
    atomic_write_bytes(folder / name, data)
    return _Held(version, int(segment.ntotal), (len(data), zlib.crc32(data)), (), (_signature(folder / name),))


def _intact(entry: _Held, where: Path, number: int) -> bool:
    """Whether `where` still has the files the gallery put there for this segment."""
    return all(_signature(where / name) == signature for name, signature in zip(entry.files(number), entry.signatures))


def _linked(entry: _Held, source: Path, folder: Path, number: int) -> _Held:
    """Link a segment's file and deltas from `source` into `folder`; what `folder` then holds."""
    for name in entry.files(number):
        link_or_copy(source / name, folder / name)
    return _Held(entry.version, entry.base_items, entry.base, entry.deltas, tuple(_signature(folder / name) for name in entry.files(number)))


def _added_codes(segment: faiss.Index, start: int) -> np.ndarray | None:
    """The Faiss standalone codes of a segment's items from position `start` on, copied as stored (what `add_sa_codes`
    appends exactly); None for an index whose items cannot be appended so (hnsw)."""
    if isinstance(segment, faiss.IndexFlat):
        return _stored(segment, segment.d)[start:].view(np.uint8).copy()
    if not isinstance(segment, faiss.IndexIVF) or segment.direct_map.type != faiss.DirectMap.Array:
        return None
    # position -> (inverted list << 32 | offset in it), the direct map every gallery IVF segment keeps
    entries = faiss.rev_swig_ptr(segment.direct_map.array.data(), segment.ntotal)[start:]
    lists, offsets = entries >> 32, entries & 0xFFFFFFFF
    codes = np.empty((len(entries), segment.code_size), dtype=np.uint8)
    for number in np.unique(lists):
        size = segment.invlists.list_size(int(number))
        stored = faiss.rev_swig_ptr(segment.invlists.get_codes(int(number)), size * segment.code_size).reshape(size, -1)
        chosen = lists == number
        codes[chosen] = stored[offsets[chosen]]
    listed = lists.astype("<i8").view(np.uint8).reshape(-1, 8)[:, : segment.coarse_code_size()]  # Faiss: little-endian
    return np.hstack([listed, codes])


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
    if not isinstance(info, dict) or info.get("format_version") not in READABLE_VERSIONS:
        version = info.get("format_version") if isinstance(info, dict) else None
        raise UserError(f"{folder / INFO_FILE}: gallery format {version}, expected {FORMAT_VERSION} (saved by another cvstream)")
    entries = info.get("segments", [])
    deltas = _listed_deltas(entries)
    if deltas is None:
        raise UserError(f"{folder / INFO_FILE}: the saved gallery cannot be read (its segment list is malformed)")
    files = [str(entry.get("file", "")) for entry in entries]
    missing = [name for name in files if not SEGMENT_FILE.fullmatch(name) or not (folder / name).is_file()]
    missing += [delta.file for listed in deltas for delta in listed if not (folder / delta.file).is_file()]
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
        for name, entry, its_deltas in zip(files, entries, deltas):
            reading = name
            data = _read_checked(folder, name, entry.get("bytes"), entry.get("crc32"), "segment file")
            segment = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
            for delta in its_deltas:
                reading = delta.file
                _apply(segment, delta, folder, name)
            segments.append(segment)
    except UserError:
        raise
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


def _listed_deltas(entries) -> list[list[Delta]] | None:
    """Per segment entry of a gallery.json, the deltas it lists (none in format 2); None where the list is malformed."""
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        return None
    try:
        deltas = [[Delta(**delta) for delta in entry.get("deltas", [])] for entry in entries]
    except TypeError:  # not a list of mappings with Delta's fields
        return None
    for delta in (delta for listed in deltas for delta in listed):
        if not isinstance(delta.file, str) or not DELTA_FILE.fullmatch(delta.file):
            return None
        if not all(type(value) is int for value in (delta.start, delta.items, delta.bytes, delta.crc32)):
            return None
    return deltas


def _read_checked(folder: Path, name: str, size, crc32, what: str) -> bytes:
    """A file's bytes, if they are those gallery.json lists (size and CRC-32; not listed in format 2: taken as they are)."""
    data = (folder / name).read_bytes()
    if size is not None and (len(data) != size or zlib.crc32(data) != crc32):
        found = f"{len(data)} bytes" if len(data) != size else "another checksum"
        raise UserError(f"{folder / name}: {found}, {INFO_FILE} says {size} bytes with CRC-32 {crc32}: the {what} is truncated, "
                        f"damaged or from another save than {INFO_FILE}; the saved gallery cannot be loaded")
    return data


def _apply(segment: faiss.Index, delta: Delta, folder: Path, name: str) -> None:
    """Append a delta's items to the segment read from `name`, after checking that it is the file gallery.json lists and
    continues the segment where it ends."""
    data = _read_checked(folder, delta.file, delta.bytes, delta.crc32, "delta")
    if segment.ntotal != delta.start:
        raise UserError(f"{folder}: {name} and its deltas hold {segment.ntotal} items, its delta {delta.file} starts at {delta.start}: "
                        f"the files are from different saves; the saved gallery cannot be loaded")
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        start, codes = int(archive["start"]), archive["codes"]
    if start != delta.start or codes.shape != (delta.items, segment.sa_code_size()) or codes.dtype != np.uint8:
        raise UserError(f"{folder / delta.file}: codes {codes.shape} from {start}, {INFO_FILE} lists {delta.items} items from "
                        f"{delta.start} of {segment.sa_code_size()} bytes; the saved gallery cannot be loaded")
    segment.add_sa_codes(np.ascontiguousarray(codes))


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
