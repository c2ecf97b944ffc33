"""Tick, prediction and dead-letter messages (JSON via orjson; the codec is this module).

Tick (input topic, Kafka key = series key):
    {"key": "sensor-17", "ts": "2026-01-01T00:10:00Z" | 1767225600.0, "value": 21.3,
     "features": {"p_mbar": 996.5}, "text": "...", "v": 1}
  `key` may be omitted when the Kafka message key is set; `features`, `text` and `v` (schema
  version, only 1 exists) are optional.

Prediction (output topic, same key): see `encode_prediction`.
Dead letter (DLQ topic): the original bytes (base64), the reason, topic/partition/offset.

Every rejection has a reason from `REASONS`, a bounded set, so it can label a metric.
"""

from __future__ import annotations

import base64
import hashlib
import math
from datetime import datetime
from typing import Any, NamedTuple

import orjson

SCHEMA_VERSION = 1
MAX_KEY_CHARS = 256
MAX_FEATURES = 64
MAX_TEXT_CHARS = 10_000

REASONS = (
    "oversized",
    "not_json",
    "not_object",
    "unknown_schema_version",
    "missing_key",
    "bad_key",
    "missing_value",
    "non_numeric_value",
    "non_finite_value",
    "bad_ts",
    "bad_features",
    "bad_text",
    "feature_set_changed",
    "missing_kafka_key",
    "processing_error",
)


class TickError(ValueError):
    """A message that is not a valid tick; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class Tick(NamedTuple):
    """One decoded tick (immutable; a named tuple, which costs a third of a frozen dataclass to build:
    the daemon makes one per message)."""

    key: str
    ts: float  # epoch seconds
    value: float
    feature_names: tuple[str, ...] = ()  # sorted
    feature_values: tuple[float, ...] = ()  # in the order of feature_names
    text: str | None = None

    @property
    def features(self) -> tuple[tuple[str, float], ...]:
        return tuple(zip(self.feature_names, self.feature_values, strict=True))


def _number(v: Any) -> float | None:
    t = type(v)
    if t is float or t is int:  # exact types: bool is an int subclass and is refused
        return float(v)
    return None


def _parse_ts(ts: Any) -> float:
    if type(ts) is float or type(ts) is int:
        if not math.isfinite(ts):
            raise TickError("bad_ts", "ts is not finite")
        return float(ts)
    if isinstance(ts, str):
        try:
            return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise TickError("bad_ts", f"ts {ts[:40]!r} is not ISO 8601") from None
    raise TickError("bad_ts", "ts missing or not a string/number")


def decode_tick(raw: bytes | None, kafka_key: bytes | None = None, max_bytes: int = 65_536) -> Tick:
    """Validate one message into a Tick, or raise TickError with its reason."""
    if raw is None:
        raise TickError("not_json", "empty message (tombstone)")
    if len(raw) > max_bytes:
        raise TickError("oversized", f"{len(raw)} bytes > limit {max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise TickError("not_json", str(exc)[:200]) from None
    if not isinstance(obj, dict):
        raise TickError("not_object", f"top level is {type(obj).__name__}")
    version = obj.get("v", SCHEMA_VERSION)
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise TickError("unknown_schema_version", f"v={str(version)[:20]}, this daemon reads v={SCHEMA_VERSION}")
    key = obj.get("key")
    if key is None and kafka_key is not None:
        try:
            key = kafka_key.decode()
        except UnicodeDecodeError:
            raise TickError("bad_key", "Kafka key is not UTF-8") from None
    if key is None:
        raise TickError("missing_key", "no 'key' field and no Kafka key")
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS or not key.isprintable():
        raise TickError("bad_key", f"key must be 1-{MAX_KEY_CHARS} printable characters")
    if "value" not in obj:
        raise TickError("missing_value", "no 'value' field")
    value = obj["value"]
    if type(value) is not float:  # the common case costs one check, the rest `_number`'s
        value = _number(value)
        if value is None:
            raise TickError("non_numeric_value", f"value is {type(obj['value']).__name__}")
    if not math.isfinite(value):
        raise TickError("non_finite_value", f"value is {value}")
    ts = obj.get("ts")
    ts = ts if type(ts) is float and math.isfinite(ts) else _parse_ts(ts)
    names: tuple[str, ...] = ()
    values: tuple[float, ...] = ()
    raw_features = obj.get("features")
    if raw_features is not None:
        if not isinstance(raw_features, dict) or len(raw_features) > MAX_FEATURES:
            raise TickError("bad_features", f"features must be an object of at most {MAX_FEATURES} numbers")
        items = []
        for name, v in raw_features.items():
            f = _number(v)
            if f is None or not math.isfinite(f) or len(name) > MAX_KEY_CHARS:
                raise TickError("bad_features", f"feature {name[:40]!r} is not a finite number")
            items.append((name, f))
        items.sort()
        names, values = tuple(n for n, _ in items), tuple(f for _, f in items)
    text = obj.get("text")
    if text is not None and (not isinstance(text, str) or len(text) > MAX_TEXT_CHARS):
        raise TickError("bad_text", f"text must be a string of at most {MAX_TEXT_CHARS} characters")
    return Tick(key, ts, value, names, values, text)


def encode_tick(key: str, ts: float | str, value: float, features: dict[str, float] | None = None) -> bytes:
    obj: dict[str, Any] = {"key": key, "ts": ts, "value": value}
    if features:
        obj["features"] = features
    return orjson.dumps(obj)


def encode_prediction(
    key: str, ts: float, seq: int, prediction: float, lower: float, upper: float, model: str,
    prev_error: float | None, version: str, anomaly: float | None = None,
    horizons: list[dict[str, float]] | None = None,
) -> bytes:
    """A prediction of the key's next value, made after tick number `seq` (1-based) at `ts`.

    `horizons` (STREAMER_HORIZONS beyond 1): one {"h", "target_seq", "prediction", "lower", "upper"} per
    horizon, the first being h = 1 (the same numbers as the top-level fields)."""
    obj: dict[str, Any] = {
        "key": key,
        "ts": ts,  # the tick this prediction follows
        "seq": seq,  # per-key tick count: consumers drop duplicates by (key, seq)
        "target_seq": seq + 1,  # what is predicted: the key's next tick
        "prediction": prediction,
        "lower": lower,  # central 90% interval
        "upper": upper,
        "model": model,
        "prev_error": prev_error,  # this tick's value minus the previous prediction (None on the first)
        "version": version,
    }
    if anomaly is not None:
        obj["anomaly"] = anomaly
    if horizons is not None:
        obj["horizons"] = horizons
    return orjson.dumps(obj)


DEAD_LETTER_KEEP_BYTES = 16_384  # of the original message; a dead letter always fits a 1 MiB record
DEAD_LETTER_KEY_BYTES = 256  # of the original Kafka key, as the dead letter's own key


def dead_letter_key(key: bytes | None) -> bytes | None:
    """The dead letter's Kafka key: the original one, cut to a size any broker takes."""
    return key if key is None or len(key) <= DEAD_LETTER_KEY_BYTES else key[:DEAD_LETTER_KEY_BYTES]


def encode_dead_letter(raw: bytes | None, reason: str, detail: str, topic: str, partition: int, offset: int,
                       key: bytes | None = None) -> bytes:
    """A dead letter: why, where from, and the original bytes, the first DEAD_LETTER_KEEP_BYTES of
    them (with their length and SHA-256, so that a message of 10 MB is still named exactly while
    its dead letter fits the DLQ). An original key longer than the dead letter's is described too."""
    obj: dict[str, Any] = {
        "reason": reason,
        "detail": detail[:1000],
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "value_b64": base64.b64encode(raw[:DEAD_LETTER_KEEP_BYTES]).decode() if raw is not None else None,
    }
    if raw is not None and len(raw) > DEAD_LETTER_KEEP_BYTES:
        obj.update(value_truncated=True, value_bytes=len(raw), value_sha256=hashlib.sha256(raw).hexdigest())
    if key is not None and len(key) > DEAD_LETTER_KEY_BYTES:
        obj.update(key_truncated=True, key_bytes=len(key), key_sha256=hashlib.sha256(key).hexdigest())
    return orjson.dumps(obj)
