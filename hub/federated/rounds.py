"""Rounds and buffers on the hub: open, announce, close, aggregate, cancel, resume.

**Open** (:func:`open_round`, REST ``POST /api/v1/rounds``, ``edgefleet round start``, a
drift alert, or the model policy's ``every_ms`` schedule, checked on each tick):
one live round per model, on a released base (the latest by default), with the close
policy and strategy fixed at open (so a restart runs the same round). Devices learn of it
through their desired state: every device whose desired model is the round's base gets
``DeviceConfig.round_id`` and ``delta_clip_norm = policy.max_norm`` (:func:`announce`),
and its next retrain sends a delta naming the round. When the round ends the id is taken
out again, so agents stop sending to it.

**Close and aggregate** (:func:`tick`): for each open round :func:`hub.rounds.lifecycle.
plan_close` decides (enough usable deltas now, or the deadline with at least
``min_deltas``, else fail); each closing round is aggregated into a candidate version
(:mod:`hub.federated.candidates`), judged and accepted or rejected, with the round's new
state written in the candidate's transaction. Ingest calls :class:`RoundsKick` after each
batch with new deltas, which runs :func:`tick` on a thread of its own; the scheduler runs
it every ``round_tick_interval_s`` for deadlines and after a restart (an ``open`` round
waits for its deadline again, a ``closing`` one is aggregated again from the stored
deltas). Ticks never overlap in one process (a lock).

**Buffered** models (FedBuff, ``ModelPolicy.mode == "buffered"``) have no rounds: every
``buffer.size`` accepted deltas are flushed into a candidate on the buffer's current
version, each weighted down by its staleness; a released candidate becomes the buffer's
new current version, so deltas on older bases count less, and past ``max_staleness``
not at all.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from hub.context import HubContext
from hub.errors import Conflict, InvalidRequest
from hub.federated import candidates
from hub.federated.models import head_of, latest_released, policy_of
from hub.federated.screening import buffer_slot, buffer_version
from hub.fleet.desired import publish_desired
from hub.metrics import ROUNDS_ENDED
from hub.rounds.aggregate import PRESETS
from hub.rounds.buffered import Buffer, Flush, plan_flush
from hub.rounds.errors import NothingToAggregate
from hub.rounds.lifecycle import (
    Accept,
    Aggregated,
    Cancel,
    Close,
    ClosePolicy,
    Event,
    Fail,
    Reject,
    Round,
    due_by_schedule,
    plan_close,
    step,
)
from hub.rounds.lineage import Excluded
from hub.rounds.policy import ModelPolicy
from hub.rounds.weighting import Submission
from hub.store import NotFound
from hub.store.round_rows import BufferState, DeltaVerdict, RoundRecord
from protocol import canonical, schema
from protocol.messages import DeviceConfig, UpdateKind

logger = logging.getLogger(__name__)

ACTOR = candidates.ACTOR
_TICK = threading.Lock()


# ---------------------------------------------------------------------- records


def to_round(record: RoundRecord) -> Round:
    return Round(
        round_id=record.round_id,
        model=record.model,
        base_version=record.base_version,
        opened_ms=record.opened_ms,
        deadline_ms=record.deadline_ms,
        policy=ClosePolicy(record.min_deltas, record.target_deltas, record.duration_ms),
        trigger=record.trigger,  # type: ignore[arg-type]
        state=record.state,  # type: ignore[arg-type]
        closed_ms=record.closed_ms,
        ended_ms=record.ended_ms,
        candidate_version=record.candidate_version,
        reason=record.reason,
    )


def _moved(record: RoundRecord, event: Event) -> RoundRecord:
    """``record`` after ``event`` (raises IllegalTransition, a 409)."""
    r = step(to_round(record), event)
    ROUNDS_ENDED.labels(record.model, r.state).inc()
    return replace(
        record,
        state=r.state,
        closed_ms=r.closed_ms,
        ended_ms=r.ended_ms,
        candidate_version=r.candidate_version,
        reason=r.reason,
    )


# ---------------------------------------------------------------------- open, cancel


def open_round(
    ctx: HubContext,
    model: str,
    *,
    actor: str,
    base_version: int | None = None,
    strategy: str | None = None,
    min_deltas: int | None = None,
    target_deltas: int | None = None,
    duration_ms: int | None = None,
    trigger: str = "operator",
) -> RoundRecord:
    """Open a round of ``model`` and announce it to the devices on its base.

    Raises:
        NotFound: no such model or version, or no released version.
        Conflict: a round of the model is live, the base is not released or has no
            head, or the model aggregates in buffered mode.
        InvalidRequest: an unknown strategy or a contradicting close policy.
    """
    store, now_ms = ctx.store, ctx.now_ms()
    if not store.registry.has_model(model):
        raise NotFound(f"no model {model[:64]!r}")
    policy = policy_of(store, model)
    if policy.mode == "buffered":
        raise Conflict(f"{model} aggregates in buffered mode, not in rounds")
    if strategy is not None and strategy not in PRESETS:
        raise InvalidRequest(f"strategy {strategy!r} is not one of {', '.join(PRESETS)}")
    close = ClosePolicy(
        min_deltas
        if min_deltas is not None
        else min(policy.close.min_deltas, target_deltas or 10**9),
        target_deltas if target_deltas is not None else policy.close.target_deltas,
        duration_ms if duration_ms is not None else policy.close.duration_ms,
    )
    with store.immediate():
        live = store.rounds.live_round(model)
        if live is not None:
            raise Conflict(f"round {live.round_id} of {model} is {live.state}: cancel it first")
        if base_version is None:
            base = latest_released(store, model)
        else:
            found = store.registry.version(model, base_version)
            if found is None:
                raise NotFound(f"no version {base_version} of model {model[:64]!r}")
            base = found
        if base.status != "released":
            raise Conflict(f"{model} v{base.version} is {base.status}: rounds start on a release")
        head_of(base)
        round_id = f"{model[:48]}-r{store.rounds.count_rounds(model) + 1}"
        r = Round.open(
            round_id, model, base.version, now_ms=now_ms, policy=close,
            trigger=trigger,  # type: ignore[arg-type]
        )  # fmt: skip
        record = RoundRecord(
            round_id=round_id,
            model=model,
            base_version=base.version,
            state=r.state,
            trigger=r.trigger,
            opened_ms=r.opened_ms,
            deadline_ms=r.deadline_ms,
            closed_ms=None,
            ended_ms=None,
            min_deltas=close.min_deltas,
            target_deltas=close.target_deltas,
            duration_ms=close.duration_ms,
            strategy=strategy or _preset_name(policy),
            candidate_version=None,
            reason="",
            created_by=actor,
        )
        store.rounds.put_round(record)
        store.audit.append(
            at=now_ms,
            actor=actor,
            action="round.open",
            target=round_id,
            detail={"model": model, "base": base.version, "strategy": record.strategy},
        )
    ROUNDS_ENDED.labels(model, "open").inc()
    announce(ctx, model, base.version, round_id, policy.max_norm)
    return record


def _preset_name(policy: ModelPolicy) -> str:
    """The preset the policy's strategy is; ``policy`` for a strategy of its own (read
    from the model's policy when the round aggregates)."""
    for name, preset in PRESETS.items():
        if preset == policy.strategy:
            return name
    return "policy"


def cancel_round(ctx: HubContext, round_id: str, *, actor: str) -> RoundRecord:
    """Raises NotFound (no such round) or IllegalTransition (it already ended)."""
    store = ctx.store
    with _TICK, store.immediate():
        record = store.rounds.round(round_id)
        if record is None:
            raise NotFound(f"no round {round_id[:64]!r}")
        record = _moved(record, Cancel(ctx.now_ms(), actor))
        store.rounds.put_round(record)
        store.audit.append(at=ctx.now_ms(), actor=actor, action="round.cancel", target=round_id)
    announce(ctx, record.model, record.base_version, None, None)
    return record


def announce(
    ctx: HubContext, model: str, base_version: int, round_id: str | None, max_norm: float | None
) -> int:
    """Set (or, ``round_id`` None, clear) the round in the desired config of every
    device whose desired model is ``model`` v``base_version``, with what the round takes
    (statistics in exact mode, deltas otherwise); publish each. How many."""
    store = ctx.store
    kind: UpdateKind = "stats" if policy_of(store, model).mode == "exact" else "delta"
    changed = []
    for twin in store.desired.twins():
        desired = twin.desired
        if desired.model_name != model:
            continue
        config = schema.from_json(DeviceConfig, canonical.loads(desired.config.encode()))
        if round_id is not None and desired.model_version == base_version:
            wanted = replace(
                config,
                round_id=round_id,
                delta_clip_norm=max_norm or config.delta_clip_norm,
                update_kind=kind,
            )
        elif round_id is None and config.round_id is not None:
            wanted = replace(config, round_id=None, update_kind="delta")
        else:
            continue
        if wanted == config:
            continue
        text = canonical.dumps(schema.to_json(wanted)).decode()
        store.desired.put(replace(desired, config=text, published_at=None))
        changed.append(desired.device_id)
    for device_id in changed:
        try:
            publish_desired(ctx, device_id)
        except Exception:  # stored: the reconciler publishes it
            logger.exception("desired state of %s not published", device_id)
    return len(changed)


# ---------------------------------------------------------------------- the tick


def tick(ctx: HubContext) -> None:
    """Close what is due, aggregate what closed, flush full buffers (module docstring)."""
    with _TICK:
        store, now_ms = ctx.store, ctx.now_ms()
        for record in store.rounds.rounds_in(("open",)):
            if _superseded(ctx, record):
                continue
            decision = plan_close(
                to_round(record), store.rounds.count_usable(record.round_id), now_ms
            )
            if isinstance(decision, Close | Fail):
                moved = _moved(record, decision)
                store.rounds.put_round(moved)
                if isinstance(decision, Fail):
                    announce(ctx, record.model, record.base_version, None, None)
        for record in store.rounds.rounds_in(("closing",)):
            _aggregate_round(ctx, record)
        for summary in store.registry.models():
            policy = policy_of(store, summary.name)
            if policy.mode == "buffered":
                while flush_buffer(ctx, summary.name):
                    pass
            else:
                _open_on_schedule(ctx, summary.name, policy)


def _superseded(ctx: HubContext, record: RoundRecord) -> bool:
    """Cancel an open round whose base is no longer the latest release: its devices are
    moving to the newer version and their deltas against the old base would build a
    candidate beside, not after, what is served. True when it was cancelled."""
    store = ctx.store
    try:
        latest = latest_released(store, record.model).version
    except NotFound:  # the base itself was withdrawn: the deadline ends the round
        return False
    if latest <= record.base_version:
        return False
    by = f"release v{latest}"
    store.rounds.put_round(_moved(record, Cancel(ctx.now_ms(), by)))
    store.audit.append(
        at=ctx.now_ms(), actor=ACTOR, action="round.cancel", target=record.round_id, reason=by
    )
    logger.info("round %s on v%d cancelled: %s superseded it", record.round_id,
                record.base_version, by)  # fmt: skip
    announce(ctx, record.model, record.base_version, None, None)
    return True


def _open_on_schedule(ctx: HubContext, model: str, policy: ModelPolicy) -> None:
    store = ctx.store
    last = store.rounds.rounds(model=model, state=None, limit=1, offset=0).items
    live = store.rounds.live_round(model) is not None
    if not due_by_schedule(policy.every_ms, last[0].opened_ms if last else None, live,
                           ctx.now_ms()):  # fmt: skip
        return
    try:
        open_round(ctx, model, actor=ACTOR, trigger="schedule")
    except (NotFound, Conflict) as e:  # no release yet, or a race with an operator
        logger.info("scheduled round of %s not opened: %s", model, e)


def rounds_job(ctx: HubContext) -> None:
    """The scheduler's ``rounds`` job."""
    tick(ctx)


def _submission(v: DeltaVerdict, staleness: int = 0) -> Submission:
    return Submission(v.key, v.device_id, v.base_version, v.num_samples, v.norm or 0.0, staleness)


def _excluded(verdicts: Sequence[DeltaVerdict]) -> list[Excluded]:
    return [
        Excluded(
            v.key,
            v.device_id,
            v.base_version,
            v.num_samples,
            "flagged" if v.status == "flagged" else "refused",
            v.reason or "",
            v.norm,
            v.staleness,
        )
        for v in verdicts
        if v.status in ("flagged", "refused")
    ]


def _aggregate_round(ctx: HubContext, record: RoundRecord) -> None:
    store = ctx.store
    policy = policy_of(store, record.model)
    pending = store.rounds.pending(record.round_id)
    base = store.registry.version(record.model, record.base_version)
    usable = [v for v in pending if v.status == "accepted"]
    try:
        if base is None:
            raise NothingToAggregate(f"base v{record.base_version} is gone")
        computed = candidates.compute(
            ctx,
            base=base,
            submissions=[_submission(v) for v in usable],
            excluded=_excluded(store.rounds.verdicts(record.round_id)),
            holdouts=store.rounds.holdouts(record.round_id),
            strategy=PRESETS.get(record.strategy, policy.strategy),
            policy=policy,
            source=f"round:{record.round_id}",
        )
    except (NothingToAggregate, Conflict) as e:
        store.rounds.put_round(_moved(record, Fail(ctx.now_ms(), str(e)[:200])))
        announce(ctx, record.model, record.base_version, None, None)
        return
    shares = computed.aggregation.shares

    def also(version: int) -> None:
        now_ms = ctx.now_ms()
        store.rounds.mark_read(
            [
                (v.device_id, v.seq, "used" if shares.get(v.key, 0.0) > 0 else "unused")
                for v in usable
            ],
            flush=0,
        )
        moved = _moved(record, Aggregated(now_ms, version))
        verdict: Event = Accept(now_ms) if computed.passed else Reject(now_ms, computed.reason)
        moved = replace(_moved(moved, verdict), judgement=computed.judgement_json())
        store.rounds.put_round(moved)

    candidates.register(ctx, computed, policy=policy, also=also)
    announce(ctx, record.model, record.base_version, None, None)


# ---------------------------------------------------------------------- buffered


def flush_buffer(ctx: HubContext, model: str) -> bool:
    """Flush the model's buffer once if it holds ``buffer.size`` usable deltas; whether
    it did."""
    store = ctx.store
    policy = policy_of(store, model)
    slot = buffer_slot(model)
    try:
        current = buffer_version(store, model)
    except NotFound:
        return False
    state = store.rounds.buffer(model) or BufferState(model, current, 0)
    state = replace(state, current_version=current)  # moved on by another release
    buffer = Buffer(model, state.current_version, (), state.flushes)
    too_stale: list[DeltaVerdict] = []
    usable: dict[str, DeltaVerdict] = {}
    for v in store.rounds.pending(slot):
        if v.status != "accepted":
            continue
        if state.current_version - v.base_version > policy.buffer.max_staleness:
            too_stale.append(v)
            continue
        if v.device_id in buffer.devices or v.base_version > state.current_version:
            continue
        buffer = buffer.add(_submission(v))
        usable[v.key] = v
    plan = plan_flush(buffer, policy.buffer)
    if not isinstance(plan, Flush):
        return False
    flush_no = state.flushes + 1
    base = store.registry.version(model, state.current_version)
    if base is None:
        return False
    taken = [usable[s.key] for s in plan.entries]
    try:
        computed = candidates.compute(
            ctx,
            base=base,
            submissions=plan.entries,
            excluded=_excluded(too_stale),
            holdouts=store.rounds.holdouts(slot),
            strategy=policy.strategy,
            policy=policy,
            source=f"buffer:{model}:{flush_no}",
        )
    except NothingToAggregate as e:
        logger.warning("buffer of %s not flushed: %s", model, e)
        store.rounds.mark_read([(v.device_id, v.seq, "unused") for v in taken], flush=flush_no)
        store.rounds.put_buffer(replace(state, flushes=flush_no))
        return True
    shares = computed.aggregation.shares

    def also(version: int) -> None:
        store.rounds.mark_read(
            [
                (v.device_id, v.seq, "used" if shares.get(v.key, 0.0) > 0 else "unused")
                for v in taken
            ]
            + [(v.device_id, v.seq, "unused") for v in too_stale],
            flush=flush_no,
        )

    registered = candidates.register(ctx, computed, policy=policy, also=also)
    current = registered.version if registered.released else state.current_version
    store.rounds.put_buffer(BufferState(model, current, flush_no))
    return True


# ---------------------------------------------------------------------- after ingest


class RoundsKick:
    """Ingest's ``on_deltas`` hook: run :func:`tick` on a thread of its own, at most one
    queued at a time, whenever a batch brought a usable delta."""

    def __init__(self, ctx: HubContext) -> None:
        self.ctx = ctx
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="edgefleet-rounds")
        self._queued = threading.Event()
        self._stopped = False

    def __call__(self, verdicts: Sequence[DeltaVerdict]) -> None:
        if self._stopped or not any(v.status == "accepted" for v in verdicts):
            return
        if not self._queued.is_set():
            self._queued.set()
            self._pool.submit(self._run)

    def _run(self) -> None:
        self._queued.clear()
        try:
            tick(self.ctx)
        except Exception:
            logger.exception("rounds tick failed")

    def stop(self) -> None:
        self._stopped = True
        self._pool.shutdown(wait=True)


__all__ = [
    "RoundsKick",
    "announce",
    "cancel_round",
    "flush_buffer",
    "open_round",
    "rounds_job",
    "tick",
    "to_round",
]
