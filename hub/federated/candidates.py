"""From screened deltas to a candidate version: aggregate, judge, register, release.

:func:`compute` is everything that reads (the deltas, one at a time through the store,
the base package, the hub's validation set) and decides (the aggregate, the candidate's
head and package, its judgement against its parent), writing nothing. :func:`register`
then writes the candidate version (``pending_release``, parent = base, ``made_by`` the
round or buffer, ``lineage`` = :class:`hub.rounds.lineage.Lineage`) together with the
caller's own bookkeeping (``also``: the round's state, the verdicts it read) in **one**
write transaction, so a hub that dies half-way aggregates again after a restart and
never mints two versions of one round.

Release: a candidate that passed and whose policy says ``auto_release`` goes into the next
release list, signed at once when the release key is on the hub (and published), or left
pending for ``edgefleet keys sign-release`` otherwise (:mod:`hub.registry.releases`). A
candidate that failed stays ``pending_release`` and is never listed.

Candidate package: the base's files with ``model.onnx`` rewritten (:func:`protocol.headparams.
write_head`), and the base's manifest with the new version and file digest. The drift
profile stays the base's: the head moved, the inputs did not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from hub.context import HubContext
from hub.errors import Conflict
from hub.federated.models import head_of, manifest_of, validation_set
from hub.metrics import AGGREGATION_SECONDS, CANDIDATE_GAIN
from hub.registry import releases
from hub.registry.artifacts import ArtifactStore
from hub.registry.profile import ModelRunner
from hub.rounds.aggregate import Aggregation, Strategy, aggregate
from hub.rounds.evaluation import (
    HoldoutReport,
    Judgement,
    evaluate_head,
    judge,
    summarize_holdouts,
)
from hub.rounds.exact import aggregate_stats
from hub.rounds.layout import Layout, Tensors
from hub.rounds.lineage import Excluded, Lineage, lineage_of
from hub.rounds.policy import ModelPolicy
from hub.rounds.weighting import Submission
from hub.store.rows import ModelVersion
from protocol import canonical, schema
from protocol.headparams import read_head, write_head
from protocol.linearstats import LinearStats, from_tensors
from protocol.metadata import Compat, ReleaseEntry
from protocol.package import decode_package, encode_package, file_entry
from protocol.tensors import decode_tensors, encode_tensors

logger = logging.getLogger(__name__)

ACTOR = "system:rounds"


@dataclass(frozen=True, eq=False)
class Computed:
    """A candidate before it is written: its package, lineage (version still to fill in)
    and judgement (``None``: no validation set, so it cannot pass)."""

    model: str
    base: ModelVersion
    files: dict[str, bytes]
    aggregation: Aggregation
    source: str
    excluded: tuple[Excluded, ...]
    judgement: Judgement | None
    validation: dict[str, float]
    holdouts: tuple[HoldoutReport, ...]

    @property
    def passed(self) -> bool:
        return self.judgement is not None and self.judgement.passed

    @property
    def reason(self) -> str:
        if self.judgement is None:
            return "no validation set for this model: upload one to judge candidates"
        return self.judgement.reason

    def judgement_json(self) -> str:
        value: dict[str, object] = {"validation": self.validation}
        if self.judgement is not None:
            value.update(passed=self.judgement.passed, gain=self.judgement.gain, reason=self.reason)
        else:
            value.update(passed=False, gain=None, reason=self.reason)
        return canonical.dumps(value).decode()


@dataclass(frozen=True)
class Registered:
    version: int
    lineage: Lineage
    released: bool
    release_pending: bool


def compute(
    ctx: HubContext,
    *,
    base: ModelVersion,
    submissions: Sequence[Submission],
    excluded: Sequence[Excluded],
    holdouts: Mapping[str, tuple[str, float, float]],
    strategy: Strategy,
    policy: ModelPolicy,
    source: str,
) -> Computed:
    """Aggregate ``submissions`` onto ``base`` and judge the result.

    ``holdouts``: by delta key, what the device said of its holdout (metric, before,
    after); summarised beside the judgement with the capped sample counts, never deciding.

    Raises:
        NothingToAggregate: no submission carries weight.
        Conflict: the base has no head, or a stored delta vanished.
    """
    store = ctx.store
    head = head_of(base)
    layout = Layout.of_head(head)

    def _stored(key: str) -> bytes:
        device_id, _, seq = key.rpartition(":")
        data = store.rounds.tensors(device_id, int(seq))
        if data is None:
            raise Conflict(f"delta {key} is no longer stored")
        return data

    def load(key: str) -> Tensors:
        return decode_tensors(_stored(key), max_elements=2 * layout.size + 64)

    package = decode_package(ArtifactStore(ctx.settings.artifacts_dir).read(base.sha256))
    w, b = read_head(package.model, head)
    started = time.perf_counter()
    if policy.mode == "exact":
        elements = 2 * (head.n_features + 1) * (head.n_features + 1 + head.n_outputs) + 64

        def load_stats(key: str) -> LinearStats:
            data = _stored(key)
            count = next(s.claimed_samples for s in submissions if s.key == key)
            return from_tensors(decode_tensors(data, max_elements=elements), count)

        aggregation = aggregate_stats(submissions, load_stats, head, (w, b), l2=policy.exact_l2)
        label = "exact"
    else:
        velocity = _velocity_of(ctx, base) if strategy.server_momentum else None
        aggregation = aggregate(
            submissions, load, layout, strategy, max_norm=policy.max_norm, velocity=velocity
        )
        label = strategy.name
    AGGREGATION_SECONDS.labels(label).observe(time.perf_counter() - started)
    update = aggregation.update
    new_w = w.astype(np.float64) + np.asarray(update[head.weight], np.float64).reshape(w.shape)
    new_b = b.astype(np.float64)
    if head.bias is not None and head.bias in update:
        new_b = new_b + np.asarray(update[head.bias], np.float64).reshape(b.shape)
    files = {**package.files, "model.onnx": write_head(package.model, head, new_w, new_b)}
    judgement, metrics = _judge(ctx, base, package.model, (w, b), (new_w, new_b), policy)
    reports = tuple(
        HoldoutReport(e.device_id, metric, before, after, e.samples_used)  # type: ignore[arg-type]
        for e in aggregation.plan.entries
        if e.key in holdouts
        for metric, before, after in [holdouts[e.key]]
    )
    return Computed(
        base.name, base, files, aggregation, source, tuple(excluded), judgement, metrics, reports
    )


def _velocity_of(ctx: HubContext, base: ModelVersion) -> Tensors | None:
    """Server momentum's velocity where ``base``'s own aggregation left it (``None``:
    ``base`` was not made with momentum, so it starts at zero)."""
    record = canonical.loads(base.lineage.encode()) if base.lineage else None
    sha256 = record.get("velocity") if isinstance(record, dict) else None
    if not isinstance(sha256, str):
        return None
    return decode_tensors(ArtifactStore(ctx.settings.artifacts_dir).read(sha256))


def _judge(
    ctx: HubContext,
    base: ModelVersion,
    model: bytes,
    parent: tuple[np.ndarray, np.ndarray],
    candidate: tuple[np.ndarray, np.ndarray],
    policy: ModelPolicy,
) -> tuple[Judgement | None, dict[str, float]]:
    """Both heads on the hub's validation set: the base model computes the head's
    features once (only the head differs between them)."""
    data = validation_set(ctx.store, base.name)
    if data is None:
        return None, {}
    manifest = manifest_of(base)
    head = head_of(base)
    features = ModelRunner(model, manifest.inputs[0]).run(data.x, head.feature)
    before = evaluate_head(head, *parent, features, data.y)
    after = evaluate_head(head, *candidate, features, data.y)
    judgement = judge(after, before, margin=policy.margin)
    CANDIDATE_GAIN.labels(base.name).set(judgement.gain)
    metric = after.metric
    return judgement, {
        f"candidate_{metric}": after.value,
        f"parent_{metric}": before.value,
        "candidate_loss": after.loss,
        "parent_loss": before.loss,
        "gain": judgement.gain,
        "rows": float(after.n),
    }


def register(
    ctx: HubContext,
    computed: Computed,
    *,
    policy: ModelPolicy,
    also: Callable[[int], object],
) -> Registered:
    """Write the candidate and, in the same transaction, ``also(version)``; release it
    when it passed and the policy auto-releases (module docstring)."""
    store, now_ms = ctx.store, ctx.now_ms()
    base = computed.base
    artifacts = ArtifactStore(ctx.settings.artifacts_dir)
    released = pending = False
    with store.immediate():
        version = store.registry.next_version(base.name)
        counter = store.registry.next_release_counter()
        files = computed.files
        manifest = replace(
            manifest_of(base),
            version=version,
            files=tuple(file_entry(n, data) for n, data in files.items()),
        )
        package = encode_package(manifest, files)
        sha256 = artifacts.put(package)
        velocity = computed.aggregation.velocity
        lineage = lineage_of(
            computed.aggregation,
            model=base.name,
            version=version,
            parent_version=base.version,
            source=computed.source,
            excluded=computed.excluded,
        ).with_validation(computed.validation, summarize_holdouts(computed.holdouts))
        if velocity is not None:
            lineage = replace(lineage, velocity=artifacts.put(encode_tensors(velocity)))
        store.registry.add_version(
            ModelVersion(
                name=base.name,
                version=version,
                sha256=sha256,
                length=len(package),
                release_counter=counter,
                status="pending_release",
                manifest=canonical.dumps(schema.to_json(manifest)).decode(),
                parent_version=base.version,
                made_by=computed.source,
                lineage=canonical.dumps(lineage.to_json()).decode(),
                created_at=now_ms,
                created_by=ACTOR,
            )
        )
        if computed.passed and policy.auto_release:
            entry = ReleaseEntry(
                base.name,
                version,
                counter,
                sha256,
                len(package),
                Compat(opset=manifest.opset, io_signature=manifest.io_signature()),
            )
            _, released = releases.draft_release(ctx, entry, now_ms=now_ms, actor=ACTOR)
            pending = not released
        store.audit.append(
            at=now_ms,
            actor=ACTOR,
            action="candidate.register",
            target=f"{base.name}/{version}",
            detail={
                "source": computed.source,
                "passed": computed.passed,
                "released": released,
                "reason": computed.reason[:200],
            },
        )
        also(version)
    logger.info(
        "candidate %s v%d from %s: %s%s",
        base.name, version, computed.source, computed.reason,
        " (released)" if released else "",
    )  # fmt: skip
    if released:
        releases.publish(ctx)
    return Registered(version, lineage, released, pending)


__all__ = ["ACTOR", "Computed", "Registered", "compute", "register"]
