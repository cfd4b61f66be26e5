"""One embedding runner: reader -> mapper -> sink, composed by `run`.

    reader   the rows to fill and, for each, its dataset Record (key, label, split, index, source
             and the bytes, loaded on demand)
    mapper   a chunk of (row, record) -> one Outcome per row: the row's versions embedded (or
             features computed), or why the image failed. Mappers: the server expansion and the
             refresh (clients/embed_job.py), Ray actors running either (clients/ray_runner.py),
             local baseline features (trainer/feature_stores.py)
    sink     the store (`StoreSink`): created or resumed, the old store to reuse opened and
             checked first, rows written and committed chunk by chunk, the summary

`run` keeps a few chunks in flight and commits them in order, so a run stopped at any point
resumes from its last committed chunk, and names how much is left when a server problem stops it.
Distributors call the same `run`: `run_embed_job` on this machine's event loop, `run_ray_embed`
with a mapper that hands each chunk to a Ray actor.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Protocol, Sequence

import numpy as np

from .datasets import Record
from .embedding import ServiceError
from .refresh import ReuseSource, open_reuse
from .store import PENDING, Store, StoreWriter


@dataclass
class Outcome:
    """What embedding one image gave: its rows, or why it failed; and, in a refresh, how many of
    its columns were copied from the old store and how many computed."""

    embeddings: Optional[np.ndarray] = None
    params: Optional[np.ndarray] = None
    image_key: str = ""
    reason: str = ""
    reused: int = 0
    computed: int = 0
    features: Optional[np.ndarray] = None  # [K, F] where the encoder taps early blocks


class Mapper(Protocol):
    async def map(self, items: Sequence[tuple[int, Record]]) -> list[Outcome]:
        """One Outcome per (row, record), in order. A bad image is an Outcome with a reason; a
        problem that concerns every image (a server gone, a dataset changed) raises."""


class StoreSink:
    """The store a run fills: created, or resumed if it holds this same job; `reuse`, an older
    store whose still-valid columns a refresh copies, is opened and checked before anything is
    written."""

    def __init__(self, path: Path, manifest: dict, reuse: Optional[Path] = None):
        self.path, self.manifest = Path(path), manifest
        self.reuse: Optional[ReuseSource] = open_reuse(reuse, self.path, manifest) if reuse else None
        self.store = Store.create_or_resume(self.path, manifest)
        self.writer = StoreWriter(self.store)
        self.reused = self.computed = 0  # columns of the rows written by this run

    def pending(self) -> list[int]:
        return [int(r) for r in self.writer.pending_rows()]

    def pending_count(self) -> int:
        return int((np.asarray(self.writer.arrays["status"]) == PENDING).sum())

    def write(self, row: int, record: Record, outcome: Outcome) -> None:
        where = dict(key=record.key, label=record.label, split=record.split, index=record.index,
                     source=record.source)
        if outcome.reason:
            self.writer.fail(row, reason=outcome.reason, **where)
        else:
            self.writer.put(row, embeddings=outcome.embeddings, params=outcome.params,
                            image_key=outcome.image_key, features=outcome.features, **where)
        self.reused += outcome.reused
        self.computed += outcome.computed

    def commit(self, rows: list[int]) -> None:
        self.writer.commit(rows)

    def summary(self) -> dict:
        summary = {**Store.open(self.path).summary(), "store": str(self.path),
                   "rows_per_image": len(self.manifest["rows"])}
        if self.reuse:
            summary.update(reused_columns=self.reused, computed_columns=self.computed)
        return summary


class Progress:
    """Images/s, embeddings/s and ETA on a rich progress bar."""

    def __init__(self, total: int, done: int, rows_per_image: int, enabled: bool, label: str = "embedding"):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.rows = rows_per_image
        self.start, self.done_here = time.perf_counter(), 0
        self.bar = Bar(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                       TimeRemainingColumn(), disable=not enabled)
        self.task = self.bar.add_task("embed", total=total, completed=done, rate="")

    def advance(self, n: int) -> None:
        # The run's average, not a short window: chunks complete in bursts.
        self.done_here += n
        speed = self.done_here / max(time.perf_counter() - self.start, 1e-9)
        self.bar.update(self.task, advance=n, rate=f"{speed:.1f} img/s, {speed * self.rows:.0f} emb/s")


async def run(reader: Callable[[int], Record], mapper: Mapper, sink: StoreSink, *, chunk_size: int,
              progress: bool = True, rows: Optional[Iterable[int]] = None, in_flight: int = 2,
              label: str = "embedding") -> dict:
    """Fill the sink's pending rows (only those among `rows`, if given) with what `mapper` makes of
    `reader`'s records, `in_flight` chunks at a time, each committed in order; the sink's summary."""
    eligible = None if rows is None else set(int(r) for r in rows)
    todo = [r for r in sink.pending() if eligible is None or r in eligible]
    total = len(sink.writer.arrays["status"]) if eligible is None else len(eligible)
    bar = Progress(total, total - len(todo), len(sink.manifest["rows"]), progress, label)

    async def chunk(rows: list[int]) -> None:
        items = [(r, reader(r)) for r in rows]
        for (row, record), outcome in zip(items, await mapper.map(items)):
            sink.write(row, record, outcome)

    with bar.bar:
        window: list[tuple[list[int], asyncio.Task]] = []  # the server never waits on a commit
        try:
            for start in range(0, len(todo), chunk_size):
                part = todo[start:start + chunk_size]
                window.append((part, asyncio.ensure_future(chunk(part))))
                if len(window) >= max(in_flight, 1):
                    await _commit(window.pop(0), sink, bar)
            while window:
                await _commit(window.pop(0), sink, bar)
        except ServiceError as exc:  # the server gone for longer than the retries last, say
            raise ServiceError(f"{exc}; the job stopped with {sink.pending_count()} of {total} images pending, "
                               f"and {sink.path} keeps the rows committed so far: run the same command again to "
                               "resume") from None
        finally:
            for _, task in window:  # chunks still in flight: stopped, their rows stay pending
                task.cancel()
            await asyncio.gather(*(task for _, task in window), return_exceptions=True)
    return sink.summary()


async def _commit(item: tuple[list[int], asyncio.Task], sink: StoreSink, bar: Progress) -> None:
    rows, task = item
    await task
    sink.commit(rows)
    bar.advance(len(rows))
