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
    """What a changelog partition held: usable checkpoints and everything that was not."""

    blobs: dict[bytes, bytes | memoryview] = field(default_factory=dict)  # series key -> checkpoint bytes
    corrupt: dict[bytes, str] = field(default_factory=dict)  # series key -> why its newest record is unusable
    foreign: dict[str, int] = field(default_factory=dict)  # "group G, model M" -> records written by another deployment
    orphans: list[bytes] = field(default_factory=list)  # chunk keys no head names: to delete
    chunks: dict[bytes, tuple[str, int]] = field(default_factory=dict)  # key -> (id, count) of the chunks in use


class ChangelogReader:
    """Feed it a changelog partition's records in offset order; `finish()` assembles the checkpoints."""

    def __init__(self, group: str, model: str):
        self.group, self.model = group, model
        self.latest: dict[bytes, bytes] = {}

    def add(self, key: bytes | None, value: bytes | None) -> None:
        if key is None or key == FENCE_KEY:
            return
        if value is None:  # a tombstone deletes the key
            self.latest.pop(key, None)
        else:
            self.latest[key] = value  # the newest record of a key wins (no compaction needed)

    def finish(self) -> Restored:
        out = Restored()
        used: set[bytes] = set()
        for key, value in self.latest.items():
            if key.startswith(INTERNAL_PREFIX):
                continue
            if value[:4] == LEGACY_MAGIC:  # written by an earlier build: no envelope, no checksum
                out.blobs[key] = value
                continue
            try:
                meta, off = unframe(value, ENVELOPE_MAGIC, ENVELOPE_VERSION, "changelog record")
                group, model = meta.get("group"), meta.get("model")
                if group != self.group or model != self.model:
                    label = f"group {group}, model {model}"
                    out.foreign[label] = out.foreign.get(label, 0) + 1
                    continue
                n, record_id, size = int(meta["chunks"]), str(meta["id"]), int(meta["size"])
                blob: bytes | memoryview
                if n == 1:
                    blob = memoryview(value)[off:]  # no copy: the record's bytes are the checkpoint's
                else:
                    names = [chunk_key(record_id, i, key) for i in range(n)]
                    used.update(names)  # a refused head's chunks stay too: nothing it points at is deleted
                    missing = [i for i, c in enumerate(names) if c not in self.latest]
                    if missing:
                        raise ValueError(f"chunks {missing[:5]} of {n} are missing")
                    blob = b"".join(self.latest[c] for c in names)
                if len(blob) != size:
                    raise ValueError(f"{len(blob)} bytes, the record says {size}")
                if zlib.crc32(blob) != meta["crc32"]:
                    raise ValueError("checksum does not match (the record was altered or torn)")
            except (ValueError, KeyError, TypeError) as exc:
                out.corrupt[key] = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)
                continue
            out.blobs[key] = blob
            if n > 1:
                out.chunks[key] = (record_id, n)
        out.orphans = [k for k in self.latest if k.startswith(CHUNK_PREFIX) and k not in used]
        self.latest = {}
        return out
