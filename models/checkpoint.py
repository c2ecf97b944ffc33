"""Framing of state bytes: magic, format version, JSON manifest, then raw payload. No pickle.

    magic (4 bytes) | version (uint16 LE) | manifest length (uint32 LE) | manifest (JSON) | payload

Loading parses JSON and copies bytes into tensors; nothing in a file can execute code.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

_HEAD = struct.Struct("<HI")


def frame(magic: bytes, version: int, manifest: dict[str, Any]) -> bytes:
    """The bytes that precede a payload."""
    meta = orjson.dumps(manifest)
    return magic + _HEAD.pack(version, len(meta)) + meta


def unframe(blob: bytes | memoryview, magic: bytes, version: int, what: str,
            older: tuple[int, ...] = ()) -> tuple[dict[str, Any], int]:
    """(manifest, offset of the payload), or ValueError saying what is wrong with the bytes. Formats in
    `older` are read too; the manifest of one says which under "__format__"."""
    if blob[:4] != magic:
        raise ValueError(f"not a {what} (bad magic)")
    if len(blob) < 4 + _HEAD.size:
        raise ValueError(f"{what} is truncated")
    got, n = _HEAD.unpack_from(blob, 4)
    if got != version and got not in older:
        raise ValueError(f"{what} format {got}, this build reads {version}")
    start = 4 + _HEAD.size
    try:
        manifest = orjson.loads(bytes(blob[start : start + n]))
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{what} manifest is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{what} manifest is not a JSON object")
    if got != version:
        manifest["__format__"] = got
    return manifest, start + n
