"""Opening and verifying a batch's frames ahead of the ingest worker, on other threads.

Ed25519 verification is most of a frame's cost and releases the GIL, so
:class:`VerifyAhead` has ``workers`` threads open and verify a batch's frames in chunks
(:func:`hub.ingest.rules.predecode`) while the worker judges the chunks before them; with
a full batch queued behind, the worker starts the next batch's too. They only save work:
judge still makes every check in its own order, and uses a signature checked ahead only
for the same bytes and the very key object its own device lookup returns, so a key that
changed in between (or a cache dropped) means verifying again. Batches smaller than
``2 * MIN_CHUNK``, frames the workers skip (hellos, large frames, devices not in the
cache) and ``workers=0`` take the inline path.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from hub.ingest.rules import Decoded, Lookup, Rules, predecode
from hub.transport.mqtt import Inbound

MIN_CHUNK = 8  # frames per verify task, at least; smaller batches are verified inline


def default_workers() -> int:
    """One per CPU (up to 4), none on a single CPU."""
    cpus = os.cpu_count() or 1
    return min(4, cpus) if cpus > 1 else 0


class VerifyAhead:
    """A pool of verify threads, made on first use; ``lookup`` gives committed devices."""

    def __init__(self, rules: Rules, lookup: Lookup, workers: int) -> None:
        self.rules = rules
        self.lookup = lookup
        self.workers = workers
        self.pool: ThreadPoolExecutor | None = None

    def start(self, items: Sequence[Inbound]) -> Iterator[Decoded | None]:
        """One :func:`predecode` result per item, in order (None throughout when the
        batch is verified inline).

        The batch is cut into chunks for the verify workers; the worker thread takes the
        results in order as they come in, and works through a chunk itself when no
        verify worker has started on it yet, so it never waits idle for queued work.
        """
        workers = self.workers
        if workers <= 0 or len(items) < 2 * MIN_CHUNK:
            return itertools.repeat(None, len(items))
        size = max(MIN_CHUNK, -(-len(items) // (4 * (workers + 1))))
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        try:
            if self.pool is None:
                self.pool = ThreadPoolExecutor(workers, thread_name_prefix="edgefleet-verify")
            futures = [self.pool.submit(self._chunk, chunk) for chunk in chunks]
        except RuntimeError:  # the pool was shut down meanwhile (stop)
            return itertools.repeat(None, len(items))
        return self._gather(chunks, futures)

    def shutdown(self) -> None:
        """Let queued work finish in the background; a new batch makes a new pool."""
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.shutdown(wait=False)

    def _gather(
        self, chunks: Sequence[Sequence[Inbound]], futures: Sequence[Future[list[Decoded | None]]]
    ) -> Iterator[Decoded | None]:
        for chunk, future in zip(chunks, futures, strict=True):
            if future.cancel():  # not started: faster to do it here than to wait
                yield from self._chunk(chunk)
                continue
            try:
                yield from future.result()
            except Exception:  # cannot happen (_chunk catches): judge copes
                yield from itertools.repeat(None, len(chunk))

    def _chunk(self, chunk: Sequence[Inbound]) -> list[Decoded | None]:
        """On a verify worker. Keys come from the cache of committed devices: a device
        not in it (or changed since) is verified inline by :func:`judge`."""
        try:
            return predecode(chunk, rules=self.rules, lookup=self.lookup)
        except Exception:  # a bug: judge meets it again and reports it
            return [None] * len(chunk)
