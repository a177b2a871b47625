"""Runs of the federated simulation (:mod:`tests.hub.rounds.fedsim`): synchronous rounds,
FedBuff, exact mode and top-k with error feedback, each returning the numbers the
acceptance tests print and check."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from hub.rounds.aggregate import Strategy, aggregate
from hub.rounds.buffered import Buffer, BufferPolicy, Flush, plan_flush
from hub.rounds.exact import combine, local_stats, solve_ridge, targets
from hub.rounds.screening import OpenSlot, ScreenContext, screen
from hub.rounds.weighting import Submission
from protocol.sparsify import sparsify, topk_fraction
from protocol.tensors import encode_tensors
from tests.hub.rounds.fedsim import (
    CLIP_NORM,
    Attack,
    Delta,
    Fleet,
    Hub,
    Params,
    honest,
    robust_hub,
)


@dataclass
class RunResult:
    accuracies: list[float]
    refused: Counter[str]
    released: int

    @property
    def final(self) -> float:
        return self.accuracies[-1]


def run_rounds(
    fleet: Fleet,
    hub: Hub,
    *,
    rounds: int,
    attackers: frozenset[int] = frozenset(),
    attack: Attack = honest,
    max_norm: float = CLIP_NORM,
    gate: bool = False,
) -> RunResult:
    """Synchronous rounds: every device trains on the current version, the hub screens
    and aggregates into a candidate. Without ``gate`` every candidate becomes the next
    version (the aggregation alone is measured); with it only a candidate that beats
    its parent on the hub's set does (the release rule), and devices otherwise train
    on the parent again. ``max_norm=inf`` screens with no norm bound (as a Flower
    server does). ``accuracies`` holds the released version's after each round."""
    params = fleet.base
    accuracies, refused, released = [fleet.accuracy(params)], Counter[str](), 0
    for r in range(rounds):
        version, round_id = r + 1, f"r{r}"
        ctx = ScreenContext(
            "rounds",
            fleet.base_version(version, max_norm),
            OpenSlot(round_id, "task", version),
            version,
        )
        trained = [fleet.local_delta(params, d, 1000 * r + d) for d in range(len(fleet.devices))]
        benign = [delta for d, (delta, _) in enumerate(trained) if d not in attackers]
        benign_mean = {k: np.mean([b[k] for b in benign], axis=0) for k in benign[0]}
        accepted = []
        for d, (delta, samples) in enumerate(trained):
            if d in attackers:
                delta, samples = attack(delta, samples, benign_mean)
            verdict = screen(fleet.upload(delta, version, samples, round_id), f"dev{d}", ctx)
            if not verdict.usable:
                refused[verdict.reason or "?"] += 1
                continue
            assert verdict.norm is not None
            key = f"dev{d}:{r}"
            accepted.append((verdict, Submission(key, f"dev{d}", version, samples, verdict.norm)))
        candidate = fleet.apply(params, hub(fleet, accepted))
        if not gate or fleet.passes_gate(candidate, params):
            params, released = candidate, released + 1
        accuracies.append(fleet.accuracy(params))
    return RunResult(accuracies, refused, released)


@dataclass
class BufferedResult:
    accuracy: float
    version: int
    reasons: Counter[str]
    probes: Counter[str]
    used: int


def run_buffered(
    fleet: Fleet,
    strategy: Strategy,
    *,
    deltas: int,
    buffer: BufferPolicy,
    staleness: Sequence[int] = (0, 1, 2, 3),
    probe_every: int = 0,
    seed: int = 0,
) -> BufferedResult:
    """FedBuff: devices arrive in shuffled waves, each trained on a version ``τ`` behind
    the current one (``τ`` drawn from ``staleness``); the hub screens in buffered mode
    and flushes every ``buffer.size`` accepted deltas into the next version.

    With ``probe_every = n``, every n-th arrival also sends two probes: its upload again
    (a replay under a new seq) and a delta on a version ``max_staleness + 2`` behind;
    ``probes`` counts what was sent, ``reasons`` what screening said to everything.
    """
    rng = np.random.default_rng(seed)
    history = {1: fleet.base}
    state = Buffer("task", 1)
    loaded: dict[str, Delta] = {}
    seen: set[str] = set()
    reasons, probes = Counter[str](), Counter[str]()
    arrivals = used = 0

    def offer(device: int, base: int, delta: Delta, samples: int) -> bool:
        nonlocal state, used
        current = state.current_version
        ctx = ScreenContext(
            "buffered",
            fleet.base_version(base),
            state.slot(),
            current,
            max_staleness=buffer.max_staleness,
            seen_digests=frozenset(seen),
        )
        upload = fleet.upload(delta, base, samples, None)
        verdict = screen(upload, f"dev{device}", ctx)
        seen.add(verdict.digest)
        reasons[verdict.reason or "accepted"] += 1
        if not verdict.usable:
            return False
        assert verdict.norm is not None
        assert verdict.tensors is not None
        key = f"dev{device}:{arrivals}"
        loaded[key] = verdict.tensors
        state = state.add(Submission(key, f"dev{device}", base, samples, verdict.norm))
        plan = plan_flush(state, buffer)
        if isinstance(plan, Flush):
            result = aggregate(
                plan.entries, loaded.__getitem__, fleet.layout, strategy, max_norm=CLIP_NORM
            )
            used += len(plan.entries)
            history[plan.next_version] = fleet.apply(history[current], result.update)
            state = plan.buffer
        return True

    while arrivals < deltas:
        for d in (int(i) for i in rng.permutation(len(fleet.devices))):
            if arrivals >= deltas:
                break
            arrivals += 1
            base = max(1, state.current_version - int(rng.choice(staleness)))
            delta, samples = fleet.local_delta(history[base], d, arrivals)
            offer(d, base, delta, samples)
            if probe_every and arrivals % probe_every == 0:
                probes["replayed"] += 1
                assert not offer(d, base, delta, samples)
                old = state.current_version - buffer.max_staleness - 2
                if old >= 1:
                    probes["too_stale"] += 1
                    stale_delta, _ = fleet.local_delta(history[old], d, 10**6 + arrivals)
                    assert not offer(d, old, stale_delta, samples)
    final = history[state.current_version]
    return BufferedResult(fleet.accuracy(final), state.current_version, reasons, probes, used)


def exact_head(fleet: Fleet, *, l2: float, min_rows: int = 32) -> Params:
    """Exact mode: every device's statistics combined and solved once."""
    per_device = {}
    for d, (x, y) in enumerate(fleet.devices):
        stats = local_stats(x, targets(fleet.head, y))
        assert stats.mismatch(fleet.head, min_rows=min_rows) is None
        per_device[f"dev{d}"] = stats
    weight, bias = solve_ridge(combine(per_device), l2=l2, anchor=fleet.base)
    return weight.astype(np.float64), bias.astype(np.float64)


def central_ridge(fleet: Fleet, *, l2: float) -> Params:
    """The same ridge problem solved on the union of the rows, in one piece."""
    x = np.vstack([x for x, _ in fleet.devices])
    y = np.concatenate([y for _, y in fleet.devices])
    weight, bias = solve_ridge(local_stats(x, targets(fleet.head, y)), l2=l2, anchor=fleet.base)
    return weight.astype(np.float64), bias.astype(np.float64)


@dataclass
class CompressedResult:
    accuracies: list[float]
    bytes_sent: list[int]
    dense_bytes: list[int]

    @property
    def ratio(self) -> float:
        return sum(self.bytes_sent) / sum(self.dense_bytes)

    @property
    def final(self) -> float:
        return self.accuracies[-1]


def run_topk(fleet: Fleet, strategy: Strategy, *, rounds: int, k: int | None) -> CompressedResult:
    """Rounds as :func:`run_rounds` (no attack), each device sending either its dense
    f32 delta (``k=None``) or the top-k of delta plus residual with error feedback, as a
    ``topk-f16`` container; the bytes are the containers' lengths."""
    params = fleet.base
    residuals: dict[int, Delta | None] = dict.fromkeys(range(len(fleet.devices)))
    accuracies, sent_bytes, dense_bytes = [fleet.accuracy(params)], [], []
    total = fleet.layout.size
    hub = robust_hub(strategy)
    for r in range(rounds):
        version, round_id = r + 1, f"r{r}"
        ctx = ScreenContext(
            "rounds", fleet.base_version(version), OpenSlot(round_id, "task", version), version
        )
        accepted = []
        for d in range(len(fleet.devices)):
            delta, samples = fleet.local_delta(params, d, 1000 * r + d)
            dense = encode_tensors(delta)
            body = dense
            if k is not None:
                sent, residuals[d] = sparsify(
                    delta, residuals[d], k, max_norm=CLIP_NORM, values="f16"
                )
                fraction = topk_fraction(k, total)
                body = encode_tensors(sent, encoding="topk-f16", topk_fraction=fraction)
            sent_bytes.append(len(body))
            dense_bytes.append(len(dense))
            upload = replace(fleet.upload(delta, version, samples, round_id), tensors=body)
            verdict = screen(upload, f"dev{d}", ctx)
            assert verdict.usable, verdict.detail
            assert verdict.norm is not None
            key = f"dev{d}:{r}"
            accepted.append((verdict, Submission(key, f"dev{d}", version, samples, verdict.norm)))
        params = fleet.apply(params, hub(fleet, accepted))
        accuracies.append(fleet.accuracy(params))
    return CompressedResult(accuracies, sent_bytes, dense_bytes)


__all__ = [
    "BufferedResult",
    "CompressedResult",
    "RunResult",
    "central_ridge",
    "exact_head",
    "run_buffered",
    "run_rounds",
    "run_topk",
]
