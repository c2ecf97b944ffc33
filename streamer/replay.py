"""Produce ticks from a table to a topic, as fast as possible or at a given rate.

Two table shapes:
* wide: `series` columns, each one key (ETT, vic_elec): one tick per key per row;
* long: a key column and a value column (EPF_FR_BE: unique_id, y), one tick per row.
`features` columns ride along in each tick's `features` object.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from aiokafka import AIOKafkaProducer

from streamer.schema import encode_tick


@dataclass(frozen=True)
class TickSource:
    df: pd.DataFrame
    series: tuple[str, ...] = ()  # wide
    key_column: str | None = None  # long
    value_column: str | None = None
    time_column: str | None = None
    features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if bool(self.series) == bool(self.key_column):
            raise ValueError("give either series columns (wide table) or a key column (long table)")
        if self.key_column and not self.value_column:
            raise ValueError("a long table needs --value-column")
        cols = [*self.series, *self.features, *(c for c in (self.key_column, self.value_column, self.time_column) if c)]
        missing = [c for c in cols if c not in self.df.columns]
        if missing:
            raise ValueError(f"columns {missing} not in {list(self.df.columns)}")

    def __len__(self) -> int:
        return len(self.df) * (len(self.series) if self.series else 1)

    def _times(self) -> np.ndarray:
        if self.time_column is None:
            return np.arange(len(self.df), dtype=np.float64)
        ts = pd.to_datetime(self.df[self.time_column], utc=True, dayfirst="/" in str(self.df[self.time_column].iloc[0]))
        # pandas may hold these in s, ms, us or ns: divide by a Timedelta, not by a guessed unit
        return ((ts - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(np.float64)

    def ticks(self) -> Iterator[tuple[bytes, bytes]]:
        """(Kafka key, message) pairs in stream order."""
        times = self._times()
        feats = self.df[list(self.features)].to_numpy(np.float64) if self.features else None
        if self.series:
            values = self.df[list(self.series)].to_numpy(np.float64)
            for i in range(len(self.df)):
                f = dict(zip(self.features, feats[i].tolist(), strict=True)) if feats is not None else None
                for j, key in enumerate(self.series):
                    yield key.encode(), encode_tick(key, float(times[i]), float(values[i, j]), f)
        else:
            keys = self.df[self.key_column].astype(str).to_numpy()
            values = self.df[self.value_column].to_numpy(np.float64)
            for i in range(len(self.df)):
                f = dict(zip(self.features, feats[i].tolist(), strict=True)) if feats is not None else None
                yield keys[i].encode(), encode_tick(keys[i], float(times[i]), float(values[i]), f)


async def replay(
    ticks: Iterable[tuple[bytes | None, bytes]], producer: AIOKafkaProducer, topic: str, rate: float | None = None,
    on_sent: Callable[[int], None] | None = None, stop: asyncio.Event | None = None,
) -> int:
    """Send every (key, message), e.g. `TickSource.ticks()`; `rate` in messages/s (None = as fast as
    possible). Returns how many were sent, all acknowledged."""
    start, sent, pending = time.monotonic(), 0, []
    for key, value in ticks:
        if stop is not None and stop.is_set():
            break
        pending.append(await producer.send(topic, value=value, key=key))
        sent += 1
        if rate is not None and sent % max(1, int(rate // 50)) == 0:
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                await asyncio.sleep(ahead)
        if len(pending) >= 5000:
            await asyncio.gather(*pending)
            if on_sent:
                on_sent(len(pending))
            pending = []
    await asyncio.gather(*pending)
    if on_sent:
        on_sent(len(pending))
    return sent
