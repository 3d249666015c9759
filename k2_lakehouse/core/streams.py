"""Streams of record batches between threads."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")


def prefetch(source: Iterator[T], depth: int = 8) -> Iterator[T]:
    """Run `source` in a thread, `depth` items ahead: producing (ClickHouse decoding, DuckDB) overlaps
    consuming (Parquet encoding, which releases the GIL)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in source:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as exc:  # hand the failure to the consumer
            q.put(exc)

    thread = threading.Thread(target=produce, name="k2-prefetch", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
