"""Staged rollouts on the running hub: the shell around the planner of hub/rollouts.

- :func:`create` validates a spec against the store (the version is released, no live
  rollout of the model covers its devices) and stores a ``pending`` rollout.
- :func:`tick` (the scheduler's ``rollouts`` job, every ``rollout_tick_s``) plans every
  rollout that still acts and applies each plan in **one write transaction**: the
  rollout's row, its devices' progress, verdicts, timeline, and each assigned or reverted
  device's new signed assignment and desired state. Only after the commit are the desired
  states published. Whatever a crash leaves unpublished, the reconciler publishes (it
  publishes every desired state stored with ``published_at`` unset), and whatever it
  leaves uncommitted the next tick decides again the same way: the planner is
  level-triggered, so a restart resumes every rollout with nothing done twice.
- :func:`operate` applies an operator's approve, pause, resume, abort or roll back, in a
  write transaction that re-reads the row, then ticks that rollout at once.
- :func:`describe` gathers what ``GET /rollouts/{id}`` and ``edgefleet rollout show``
  print.

The shadow stage's ``shadow_start`` and ``shadow_stop`` are applied the same way: a
signed shadow assignment put beside the device's served one (or dropped) in the tick's
transaction, the desired state published after the commit. A device that cannot take the
shadow (no desired state, an incompatible version) has its shadow record stopped with
the reason, so it is not waited for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from hub import metrics
from hub.context import HubContext
from hub.errors import Conflict, HubError, KeyUnavailable
from hub.fleet.desired import (
    assign_desired,
    assign_shadow,
    clear_desired,
    clear_shadow,
    publish_desired,
)
from hub.fleet.documents import signed_release
from hub.fleet.rollout_inputs import device_metrics, device_views
from hub.rollouts import (
    Covered,
    DeviceView,
    Plan,
    Rollout,
    RolloutSpec,
    ShadowProgress,
    StageCounts,
    check_conflict,
    plan,
    tally,
)
from hub.rollouts.machine import LIVE, Failed, OperatorEvent, advance
from hub.rollouts.machine import operate as operate_machine
from hub.store import NotFound
from hub.store.rollout_rows import RolloutRecord, StoredVerdict, TimelineLine

logger = logging.getLogger(__name__)

SYSTEM = "system:rollouts"
PUBLISH_BATCH = 100
"""Desired states a tick publishes per write transaction: the store commits (and syncs)
once per batch instead of once per device, and holds its write lock no longer than a
batch's sends (1,000 devices took about 2 s of commits one by one)."""


@dataclass(frozen=True)
class Description:
    """A rollout with everything ``show`` prints."""

    record: RolloutRecord
    counts: tuple[StageCounts, ...]
    verdicts: list[StoredVerdict]
    timeline: list[TimelineLine]


def create(ctx: HubContext, spec: RolloutSpec, *, actor: str) -> RolloutRecord:
    """Store a new ``pending`` rollout of ``spec`` (the next tick starts it).

    Raises:
        NotFound: no such model version.
        Conflict: the version is not in the signed release list.
        RolloutConflict: a live rollout of the model covers some of its devices.
    """
    store, now_ms = ctx.store, ctx.now_ms()
    if store.registry.version(spec.model, spec.version) is None:
        raise NotFound(f"no version {spec.version} of model {spec.model[:64]!r}")
    current = signed_release(store)
    if current is None or current.entry(spec.model, spec.version) is None:
        raise Conflict(f"{spec.model} v{spec.version} is not released: release it first")
    with store.immediate():
        devices = store.rollouts.active_devices()
        mine = {d.id for d in devices if spec.target.matches(d.id, d.tags)}
        others = []
        for other in store.rollouts.ticking():
            rollout = other.rollout
            if rollout.phase not in LIVE:
                continue
            covered = {d.id for d in devices if rollout.spec.target.matches(d.id, d.tags)}
            covered |= {p.device_id for p in store.rollouts.progress(rollout.rollout_id)}
            others.append(Covered(rollout, frozenset(covered)))
        check_conflict(spec, mine, others)
        rollout_id = store.rollouts.next_id()
        record = RolloutRecord(Rollout(rollout_id, spec, changed_ms=now_ms), now_ms, actor)
        store.rollouts.add(record)
        store.rollouts.supersede(spec.model, by=rollout_id)
        store.rollouts.add_timeline(
            rollout_id,
            now_ms,
            actor,
            [f"created: {spec.model} v{spec.version}, {len(mine)} devices"],
        )
        store.audit.append(
            at=now_ms,
            actor=actor,
            action="rollout.create",
            target=rollout_id,
            detail={"model": spec.model, "version": spec.version, "devices": len(mine)},
        )
    return record


def tick(ctx: HubContext) -> int:
    """Plan and apply every rollout that still acts; how many were planned."""
    records = ctx.store.rollouts.ticking()
    for record in records:
        tick_one(ctx, record.rollout.rollout_id)
    return len(records)


def rollouts_job(ctx: HubContext) -> None:
    """The scheduler's shim."""
    tick(ctx)


def tick_one(ctx: HubContext, rollout_id: str) -> Plan | None:
    """Plan one rollout and apply the plan (module docstring); None if it no longer acts."""
    store = ctx.store
    started = time.perf_counter()
    with store.immediate():
        record = store.rollouts.find(rollout_id)
        if record is None or not _acts(record):
            return None
        now_ms = ctx.now_ms()
        views = device_views(store, record.rollout)
        decided = plan(record.rollout, views, device_metrics(store, record.rollout, views), now_ms)
        published, cleared = _apply(ctx, record.rollout, decided, now_ms)
    metrics.ROLLOUT_PLAN_SECONDS.observe(time.perf_counter() - started)
    ids = list(dict.fromkeys(published))
    for start in range(0, len(ids), PUBLISH_BATCH):
        with store.immediate():  # the batch's "published" marks: one commit, not one each
            for device_id in ids[start : start + PUBLISH_BATCH]:
                _publish(ctx, device_id)
    for device_id in cleared:
        clear_desired(ctx, device_id=device_id, actor=SYSTEM)
    return decided


def _acts(record: RolloutRecord) -> bool:
    phase = record.rollout.phase
    return phase in LIVE or (phase == "completed" and record.superseded_by is None)


def _apply(
    ctx: HubContext, before: Rollout, decided: Plan, now_ms: int
) -> tuple[list[str], list[str]]:
    """Write the plan (inside the caller's transaction); the devices whose desired state
    changed, and those whose desired state is to be cleared after the commit."""
    store = ctx.store
    rollout_id = before.rollout_id
    spec = before.spec
    progress = {p.device_id: p for p in decided.progress}
    lines = [*_verdict_changes(ctx, before, decided, now_ms), *decided.timeline]
    published: list[str] = []
    cleared: list[str] = []
    current = signed_release(store)
    actor = f"rollout:{rollout_id}"

    def served(device_id: str, version: int) -> Callable[[], object]:
        return partial(
            assign_desired,
            ctx,
            device_id=device_id,
            model_name=spec.model,
            model_version=version,
            actor=actor,
            now_ms=now_ms,
            current=current,
        )

    for device_id in decided.assign:
        if (error := _attempt(served(device_id, spec.version))) is None:
            published.append(device_id)
        else:  # the device cannot take it: its attempt failed, for good
            progress[device_id] = advance(progress[device_id], Failed(str(error), False), now_ms)
            lines.append(f"{device_id} not assigned: {error}")
    for revert in decided.revert:
        if revert.version is None:
            cleared.append(revert.device_id)
        elif (error := _attempt(served(revert.device_id, revert.version))) is None:
            published.append(revert.device_id)
        else:  # it times out going back, and the timeline says why
            lines.append(f"{revert.device_id} not sent back to v{revert.version}: {error}")
    shadows = {s.device_id: s for s in decided.shadows}
    for device_id in decided.shadow_start:
        shadow = partial(
            assign_shadow,
            ctx,
            device_id=device_id,
            model_name=spec.model,
            model_version=spec.version,
            actor=actor,
            now_ms=now_ms,
            current=current,
        )
        if (error := _attempt(shadow)) is None:
            published.append(device_id)
        else:  # it cannot run the shadow: not waited for
            shadows[device_id] = ShadowProgress(device_id, "stopped", now_ms)
            lines.append(f"{device_id} runs no shadow: {error}")
    for device_id in decided.shadow_stop:
        if clear_shadow(ctx, device_id=device_id, actor=actor, now_ms=now_ms):
            published.append(device_id)
    rollouts = store.rollouts
    if decided.rollout != before:
        rollouts.put_state(decided.rollout)
    rollouts.put_progress(rollout_id, list(progress.values()))
    rollouts.put_shadows(rollout_id, list(shadows.values()))
    rollouts.add_timeline(rollout_id, now_ms, SYSTEM, lines)
    for line in decided.timeline:
        event = line.split(":", 1)[0]
        store.audit.append(
            at=now_ms, actor=SYSTEM, action=f"rollout.{event}", target=rollout_id, reason=line
        )
        if event == "halt":
            for verdict in decided.verdicts:
                if verdict.outcome == "fail":
                    metrics.ROLLOUTS_HALTED.labels(verdict.metric).inc()
    return published, cleared


def _attempt(write: Callable[[], object]) -> HubError | None:
    """One device's desired-state write of a plan; the error that kept it from happening
    (a missing signing key is not one device's problem: it stops the tick)."""
    try:
        write()
    except KeyUnavailable:
        raise
    except HubError as e:
        return e
    return None


def _verdict_changes(ctx: HubContext, before: Rollout, decided: Plan, now_ms: int) -> list[str]:
    """Store the verdicts under the stage they judged; a timeline line per changed outcome."""
    if not decided.verdicts:
        return []
    rollouts = ctx.store.rollouts
    waiting = "awaiting_approval" in (before.phase, before.paused_from)
    stage = decided.rollout.stage if before.phase == "pending" else before.stage
    stage = stage - 1 if waiting else stage
    known = {
        v.verdict.metric: v.verdict.outcome
        for v in rollouts.verdicts(before.rollout_id)
        if v.stage == stage
    }
    rollouts.put_verdicts(before.rollout_id, stage, now_ms, decided.verdicts)
    return [
        f"gate {v.metric} at {_stage_name(stage)}: {known.get(v.metric, 'none')} -> "
        f"{v.outcome} ({v.reason})"
        for v in decided.verdicts
        if known.get(v.metric) != v.outcome
    ]


def operate(ctx: HubContext, rollout_id: str, event: OperatorEvent, *, actor: str) -> Rollout:
    """An operator's approve, pause, resume, abort or roll back; the rollout after it
    (and after the tick that follows it at once).

    Raises:
        NotFound: no such rollout.
        IllegalTransition: not allowed in the rollout's phase.
    """
    store, now_ms = ctx.store, ctx.now_ms()
    name = type(event).__name__.lower()
    stopped: list[str] = []
    with store.immediate():
        record = get(ctx, rollout_id)
        moved = operate_machine(record.rollout, event, now_ms)
        store.rollouts.put_state(moved)
        if moved.phase == "aborted":  # no tick follows an abort: its shadows stop here
            stopped = _stop_shadows(ctx, rollout_id, now_ms)
        why = getattr(event, "reason", "")
        line = f"{name}: {record.rollout.phase} -> {moved.phase}" + (f" ({why})" if why else "")
        store.rollouts.add_timeline(rollout_id, now_ms, actor, [line])
        store.audit.append(
            at=now_ms, actor=actor, action=f"rollout.{name}", target=rollout_id, reason=why
        )
    for device_id in stopped:
        _publish(ctx, device_id)
    tick_one(ctx, rollout_id)
    return get(ctx, rollout_id).rollout


def _stop_shadows(ctx: HubContext, rollout_id: str, now_ms: int) -> list[str]:
    """Drop every running shadow of the rollout (inside the caller's transaction); the
    devices whose desired state changed."""
    running = [s for s in ctx.store.rollouts.shadows(rollout_id) if s.state == "running"]
    actor = f"rollout:{rollout_id}"
    changed = [
        s.device_id
        for s in running
        if clear_shadow(ctx, device_id=s.device_id, actor=actor, now_ms=now_ms)
    ]
    ctx.store.rollouts.put_shadows(
        rollout_id, [ShadowProgress(s.device_id, "stopped", now_ms) for s in running]
    )
    return changed


def _publish(ctx: HubContext, device_id: str) -> None:
    try:
        publish_desired(ctx, device_id)
    except HubError as e:  # stored; the reconciler publishes it on a later tick
        logger.warning("desired state of %s not published: %s", device_id, e)


def get(ctx: HubContext, rollout_id: str) -> RolloutRecord:
    """Raises NotFound: no such rollout."""
    record = ctx.store.rollouts.find(rollout_id)
    if record is None:
        raise NotFound(f"no rollout {rollout_id[:64]!r}")
    return record


def describe(ctx: HubContext, rollout_id: str) -> Description:
    """Raises NotFound: no such rollout."""
    record = get(ctx, rollout_id)
    views: list[DeviceView] = device_views(ctx.store, record.rollout)
    return Description(
        record,
        tally(record.rollout, views),
        ctx.store.rollouts.verdicts(rollout_id),
        ctx.store.rollouts.timeline(rollout_id),
    )


def _stage_name(stage: int) -> str:
    return "shadow stage" if stage < 0 else f"stage {stage + 1}"


__all__ = [
    "Description",
    "create",
    "describe",
    "get",
    "operate",
    "rollouts_job",
    "tick",
    "tick_one",
]
