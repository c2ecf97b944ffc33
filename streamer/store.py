"""The partition state store: one object that owns, per assigned input partition, where its state
stands (after Quix Streams' `Checkpoint` and Kafka Streams' state stores).

Per partition it knows:
    status       restoring (paused: its keys' state is not here yet), ready, or failed (paused,
                 retried with backoff; its reason kept for the log and /readyz)
    next_offset  the input offset its in-memory state reflects (the first tick not yet stepped)
    to_commit    an offset published and stepped but not yet committed (it waits for the checkpoint
                 that makes the state behind it durable)
    stepping     ticks were stepped and their predictions are not yet acknowledged: until they are,
                 its state claims more than was published and must not be checkpointed
    due-ness     ticks and seconds since its last checkpoint

Its keys are the pipeline's keys whose `partition` it is. The rebalance listener only calls
`revoke` and `assign`; the daemon's loop asks `to_restore()`, `due()` and `checkpointable()`
between batches and reports back with `restored`, `restore_failed`, `stepped`, `published` and
`checkpointed`. Only a ready partition is ever checkpointed, so nothing is written over a
changelog record the replica did not restore from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Status = Literal["restoring", "ready", "failed"]
GOLDEN = 0.6180339887  # staggers partitions' checkpoint phases so they do not coincide


@dataclass
class PartitionState:
    partition: int
    status: Status = "restoring"
    next_offset: int | None = None
    to_commit: int | None = None
    stepping: bool = False
    since_checkpoint: int = 0  # ticks
    last_checkpoint: float = math.nan  # monotonic seconds; nan: not yet (set when it starts ticking)
    attempts: int = 0  # failed restores in a row
    retry_at: float = 0.0
    error: str = ""


class PartitionStore:
    def __init__(self, checkpoint_ticks: int, checkpoint_interval_s: float, backoff_s: float = 1.0,
                 backoff_max_s: float = 30.0):
        self.checkpoint_ticks, self.checkpoint_interval_s = checkpoint_ticks, checkpoint_interval_s
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.parts: dict[int, PartitionState] = {}
        self.generation = 0  # moves on every revoke and assign: work planned before one is not finished after it
        self.to_drop: set[int] = set()  # revoked partitions whose keys are still in memory
        self.revoked_ready: set[int] = set()  # of those, the ones restored and checkpointed when revoked

    # ------------------------------------------------------ the rebalance listener's side
    def revoke(self, partitions: set[int]) -> None:
        self.generation += 1
        for p in partitions:
            st = self.parts.pop(p, None)
            if st is not None and st.status == "ready" and not st.stepping:
                self.revoked_ready.add(p)
            else:
                self.revoked_ready.discard(p)
        self.to_drop |= partitions

    def assign(self, partitions: set[int]) -> None:
        """New partitions start paused, to be restored. Keys of a revoked partition stay listed in
        `to_drop` whether or not it comes back: only a partition marked restored keeps them."""
        self.generation += 1
        for p in partitions:
            self.parts.setdefault(p, PartitionState(p))

    # ------------------------------------------------------------- queries
    @property
    def assigned(self) -> set[int]:
        return set(self.parts)

    def ready(self, p: int) -> bool:
        st = self.parts.get(p)
        return st is not None and st.status == "ready"

    def all_ready(self) -> bool:
        return all(st.status == "ready" for st in self.parts.values())

    def not_ready(self) -> dict[int, str]:
        return {p: st.status + (f" ({st.error})" if st.error else "") for p, st in self.parts.items()
                if st.status != "ready"}

    def to_restore(self, now: float) -> set[int]:
        return {p for p, st in self.parts.items() if st.status != "ready" and st.retry_at <= now}

    def due(self, now: float) -> list[int]:
        """Ready partitions past their checkpoint bound (ticks or seconds), most overdue first."""
        overdue = {}
        for p, st in self.parts.items():
            if st.status != "ready" or st.stepping or math.isnan(st.last_checkpoint):
                continue
            ratio = max(st.since_checkpoint / self.checkpoint_ticks,
                        (now - st.last_checkpoint) / self.checkpoint_interval_s)
            if ratio >= 1.0:
                overdue[p] = ratio
        return sorted(overdue, key=lambda p: -overdue[p])

    def checkpointable(self, partitions: set[int] | None = None) -> set[int]:
        """Of these (default: all assigned), the partitions whose state may be written: restored from
        the changelog and claiming nothing that is not published."""
        wanted = self.assigned if partitions is None else partitions
        return {p for p in wanted if p in self.parts and self.parts[p].status == "ready" and not self.parts[p].stepping}

    def offsets_to_commit(self, partitions: set[int]) -> dict[int, int]:
        return {p: st.to_commit for p in partitions if (st := self.parts.get(p)) is not None
                and st.to_commit is not None}

    # --------------------------------------------------------- the loop's side
    def restored(self, partitions: set[int]) -> None:
        for p in partitions:
            st = self.parts.get(p)
            if st is not None:
                st.status, st.attempts, st.error = "ready", 0, ""

    def restore_failed(self, partitions: set[int], error: str, now: float) -> float:
        """Mark them failed and schedule a retry with exponential backoff; returns the delay."""
        delay = self.backoff_s
        for p in partitions:
            st = self.parts.get(p)
            if st is None:
                continue
            st.attempts += 1
            delay = min(self.backoff_max_s, self.backoff_s * 2 ** (st.attempts - 1))
            st.status, st.error, st.retry_at = "failed", error, now + delay
        return delay

    def stepped(self, partitions: set[int]) -> None:
        for p in partitions:
            if p in self.parts:
                self.parts[p].stepping = True

    def published(self, commit: dict[int, int], handled: dict[int, int], now: float) -> None:
        """A chunk's predictions are acknowledged: its offsets may be committed with the next checkpoint."""
        for p, st in self.parts.items():
            st.stepping = False
            if p in commit:
                st.next_offset = st.to_commit = commit[p]
                st.since_checkpoint += handled.get(p, 0)
                if math.isnan(st.last_checkpoint):
                    st.last_checkpoint = now - (p * GOLDEN) % 1.0 * self.checkpoint_interval_s

    def checkpointed(self, partitions: set[int], committed: bool, now: float) -> None:
        for p in partitions:
            st = self.parts.get(p)
            if st is None:
                continue
            st.since_checkpoint, st.last_checkpoint = 0, now
            if committed:
                st.to_commit = None

    def keepable(self, partitions: set[int]) -> set[int]:
        """Of partitions being assigned, those revoked from this replica fully restored and checkpointed,
        whose keys are still in memory (the caller checks that nobody owned them in between)."""
        return partitions & self.to_drop & self.revoked_ready

    def take_drops(self) -> set[int]:
        out, self.to_drop = self.to_drop, set()
        self.revoked_ready -= out
        return out
