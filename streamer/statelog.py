"""The changelog's record format: a key's checkpoint as Kafka records of any size, and back.

A checkpoint (`Pipeline.snapshot_keys` bytes) is wrapped in an envelope that says which
deployment wrote it and lets a reader check it whole:

    head record    key = the series key
                   value = "TSCL" | version | JSON {group, model, size, crc32, chunks, id} | payload
    chunk records  key = __streamer_chunk__/<id>/<i>/<series key>, value = bytes i of the payload

A payload up to `chunk_bytes` rides in the head record itself. A larger one (particle filters,
EKF covariances: 0.5-8 MB per key) is cut into chunks written before the head, so every record
fits Apache Kafka's default `message.max.bytes` (1 MiB) and a compacted topic keeps the latest
head and the chunks it names (a chunk's key carries the head's id, so a newer checkpoint never
overwrites the chunks an older head still points at). Once a newer head is written, the chunks of
the one before are deleted with tombstones; chunks a crash left without a head are found on
restore and deleted too.

A reader keeps the newest record of each Kafka key (Tansu never compacts), then assembles each
head's payload and checks its length and CRC-32: a torn, truncated or altered record is refused
with its reason, never half-used.
"""

from __future__ import annotations

import uuid
import zlib
from dataclasses import dataclass, field

from models.checkpoint import frame, unframe

ENVELOPE_MAGIC = b"TSCL"  # tick-streamer changelog record
ENVELOPE_VERSION = 1
LEGACY_MAGIC = b"TSCK"  # a bare checkpoint, as written before the envelope existed
INTERNAL_PREFIX = b"__streamer_"  # fences and chunks: never a series' record
CHUNK_PREFIX = b"__streamer_chunk__/"
FENCE_KEY = b"__streamer_fence__"
CHUNK_BYTES = 768 * 1024  # with the record's own overhead, well inside Kafka's default 1 MiB limit

Record = tuple[bytes, bytes | None]  # Kafka key, value (None: a tombstone)


def chunk_key(record_id: str, i: int, key: bytes) -> bytes:
    return CHUNK_PREFIX + record_id.encode() + b"/" + str(i).encode() + b"/" + key


@dataclass
class ChangelogWriter:
    """Turns checkpoints into records; remembers each key's chunks so the next checkpoint deletes them."""

    group: str
    model: str
    chunk_bytes: int = CHUNK_BYTES
    chunks: dict[bytes, tuple[str, int]] = field(default_factory=dict)  # key -> (id, count) of its live chunks

    def records(self, key: bytes, blob: bytes) -> list[Record]:
        """The records of one checkpoint, in the order they must be written (chunks, head, tombstones)."""
        record_id = uuid.uuid4().hex[:16]
        n = 1 if len(blob) <= self.chunk_bytes else -(-len(blob) // self.chunk_bytes)
        head = frame(ENVELOPE_MAGIC, ENVELOPE_VERSION, {
            "group": self.group, "model": self.model, "size": len(blob), "crc32": zlib.crc32(blob),
            "chunks": n, "id": record_id})
        out: list[Record] = []
        if n == 1:
            out.append((key, head + blob))
        else:
            view = memoryview(blob)
            out += [(chunk_key(record_id, i, key), bytes(view[i * self.chunk_bytes : (i + 1) * self.chunk_bytes]))
                    for i in range(n)]
            out.append((key, head))
        old = self.chunks.pop(key, None)
        if old is not None:  # after the new head: a crash in between leaves the old chunks, never none
            out += [(chunk_key(old[0], i, key), None) for i in range(old[1])]
        if n > 1:
            self.chunks[key] = (record_id, n)
        return out

    def forget(self, keys: list[bytes]) -> None:
        """Keys no longer ours (their partition was revoked): the next owner tracks their chunks."""
        for k in keys:
            self.chunks.pop(k, None)


@dataclass
class Restored:
    """What a changelog partition held, besides the checkpoints handed out by `take()`."""

    corrupt: dict[bytes, str] = field(default_factory=dict)  # series key -> why its newest record is unusable
    deleted: set[bytes] = field(default_factory=set)  # keys whose newest record is a tombstone
    foreign: dict[str, int] = field(default_factory=dict)  # "group G, model M" -> records another deployment wrote
    orphans: list[bytes] = field(default_factory=list)  # chunk keys no head names: to delete
    chunks: dict[bytes, tuple[str, int]] = field(default_factory=dict)  # key -> (id, count) of the chunks in use
    loaded: set[bytes] = field(default_factory=set)  # keys the caller loaded (it keeps this up to date)
    load_s: float = 0.0  # the caller's time loading them


class ChangelogReader:
    """Feed it a changelog partition's records in offset order. Checked checkpoints collect until
    `take()` hands them out, so a caller can load them a slice at a time while reading: a restore
    then holds about one slice of records beside the state it rebuilds, not the whole partition.
    A key met again later is handed out again (the newest record wins); one whose newest record is a
    tombstone, or unusable, ends up in `result.deleted` or `result.corrupt`."""

    def __init__(self, group: str, model: str):
        self.group, self.model = group, model
        self._raw: dict[bytes, bytes | None] = {}  # the newest record of each key since the last take
        self.pending_bytes = 0
        self._chunks: dict[bytes, bytes] = {}  # chunk records waiting for their head
        self.result = Restored()

    def add(self, key: bytes | None, value: bytes | None) -> None:
        """Keep a record (cheap: the checks run in `take`, off the event loop)."""
        if key is None or key == FENCE_KEY:
            return
        if key.startswith(CHUNK_PREFIX):
            if value is None:
                self._chunks.pop(key, None)
            else:
                self._chunks[key] = value
            return
        if key.startswith(INTERNAL_PREFIX):
            return
        self._raw[key] = value  # the newest record of a key wins (no compaction needed)
        self.pending_bytes += len(value) if value is not None else 0

    def _check(self, key: bytes, value: bytes | None) -> bytes | memoryview | None:
        """A key's newest record read since the last take: its checkpoint bytes, or None (a tombstone, an
        unusable record or another deployment's), the account in `result` kept up to date."""
        r = self.result
        if value is None:  # a tombstone deletes the key
            r.chunks.pop(key, None)
            r.deleted.add(key)
            r.corrupt.pop(key, None)
            return None
        try:
            opened = self._open(key, value)
        except (ValueError, KeyError, TypeError) as exc:
            r.chunks.pop(key, None)
            r.deleted.discard(key)
            r.corrupt[key] = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            return None
        if opened is None:  # another deployment's: counted, not used
            return None
        blob, chunks = opened
        r.deleted.discard(key)
        r.corrupt.pop(key, None)
        if chunks is None:
            r.chunks.pop(key, None)
        else:
            r.chunks[key] = chunks
        return blob

    def _open(self, key: bytes, value: bytes) -> tuple[bytes | memoryview, tuple[str, int] | None] | None:
        """(checkpoint bytes, its chunks' (id, count) or None), None for a record of another deployment,
        or ValueError saying why the record is unusable."""
        if value[:4] == LEGACY_MAGIC:  # written by an earlier build: no envelope, no checksum
            return value, None
        meta, off = unframe(value, ENVELOPE_MAGIC, ENVELOPE_VERSION, "changelog record")
        group, model = meta.get("group"), meta.get("model")
        if group != self.group or model != self.model:
            label = f"group {group}, model {model}"
            self.result.foreign[label] = self.result.foreign.get(label, 0) + 1
            return None
        n, record_id, size = int(meta["chunks"]), str(meta["id"]), int(meta["size"])
        blob: bytes | memoryview
        chunks = None
        if n == 1:
            blob = memoryview(value)[off:]  # no copy: the record's bytes are the checkpoint's
        else:
            names = [chunk_key(record_id, i, key) for i in range(n)]
            missing = [i for i, c in enumerate(names) if c not in self._chunks]
            if missing:
                raise ValueError(f"chunks {missing[:5]} of {n} are missing")
            blob = b"".join(self._chunks.pop(c) for c in names)
            chunks = (record_id, n)
        if len(blob) != size:
            raise ValueError(f"{len(blob)} bytes, the record says {size}")
        if zlib.crc32(blob) != meta["crc32"]:
            raise ValueError("checksum does not match (the record was altered or torn)")
        return blob, chunks

    def take(self) -> dict[bytes, bytes | memoryview]:
        """The records read since the last call, checked and assembled: series key -> checkpoint bytes
        (CPU work: the daemon calls it in a worker thread)."""
        raw, self._raw, self.pending_bytes = self._raw, {}, 0
        out = {}
        for key, value in raw.items():  # each key once: `_raw` kept only its newest record
            blob = self._check(key, value)
            if blob is not None:
                out[key] = blob
        return out

    @property
    def waiting(self) -> bool:
        """Records read and not yet taken."""
        return bool(self._raw)

    def finish(self) -> Restored:
        """After the last record and the last `take()`: the partition's account."""
        self.result.orphans = list(self._chunks)
        self._chunks = {}
        return self.result
