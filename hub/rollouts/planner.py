"""The pure rollout planner: from the rollout, its devices and their metrics, what to do now.

``plan(rollout, views, metrics, now_ms)`` reads every device's report (:func:`observe`),
evaluates the current stage's gates, moves the rollout through its table (start, advance,
wait for approval, complete, halt, pause on gates inconclusive past the extended bake,
finish rolling back) and decides which devices to act on:

- **assign** the new version (a new signed assignment each): first retries of devices
  whose last attempt failed transiently or timed out, while retries last, then devices not
  yet touched, in the cohort order, until the stage holds its quota; never more than
  ``max_updating`` devices updating at once; offline devices are skipped until they
  return (so they neither time out nor hold a slot);
- **revert** every device the rollout touched, once it halts or an operator rolls it back,
  to the version it ran before, by a *new* assignment (not throttled: getting off a bad
  version comes first);
- **shadow start / stop** on the shadow stage's devices.

The result is a :class:`Plan`: the actions, the progress records that changed, the
rollout's new state, the verdicts, and timeline lines. Everything is a function of its
arguments, and every decision is *level-triggered* (taken from the state, not from what
happened since the last tick): planning twice on the same state gives the same plan, and a
device recorded as updating is never assigned again. So the shell can apply a plan, die at
any point, restart and plan again from the store: whatever part of the plan it had
committed is not repeated and the rest is decided again the same way. (The shell commits
each device's progress row together with its desired state, see docs/rollouts.md.)

While awaiting approval or paused, the last stage's gates are still evaluated and a
failure still halts: a regression found while a human is away is rolled back, not kept.
Completed rollouts keep assigning devices that join the target or come back online.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from hub.rollouts.cohorts import pinned, shadow_quota, sort_by_order, stage_quotas, stratum
from hub.rollouts.devices import DeviceView, ShadowProgress, observe
from hub.rollouts.gates import (
    NO_METRICS,
    Columns,
    DeviceMetrics,
    GateVerdict,
    evaluate_comparative,
    evaluate_shadow,
    evaluate_update_success,
    no_canaries,
)
from hub.rollouts.machine import (
    SHADOW_STAGE,
    Advance,
    Assign,
    AwaitApproval,
    Complete,
    DeviceEvent,
    DeviceProgress,
    Finish,
    Halt,
    Pause,
    Retry,
    Revert,
    Reverted,
    Rollout,
    RolloutEvent,
    Start,
    StartShadow,
    advance,
    step,
)
from hub.rollouts.spec import COMPARATIVE, GateSpec, ShadowStage, Stage


@dataclass(frozen=True)
class RevertTo:
    """Assign ``device_id`` the version it ran before; None: it ran none, clear it."""

    device_id: str
    version: int | None


@dataclass(frozen=True)
class Plan:
    """One tick's decisions (module docstring); device ids in cohort order."""

    rollout: Rollout
    assign: tuple[str, ...] = ()
    revert: tuple[RevertTo, ...] = ()
    shadow_start: tuple[str, ...] = ()
    shadow_stop: tuple[str, ...] = ()
    progress: tuple[DeviceProgress, ...] = ()
    shadows: tuple[ShadowProgress, ...] = ()
    verdicts: tuple[GateVerdict, ...] = ()
    timeline: tuple[str, ...] = ()


def plan(
    rollout: Rollout,
    views: Sequence[DeviceView],
    metrics: Mapping[str, DeviceMetrics],
    now_ms: int,
) -> Plan:
    """Decide this tick (module docstring). ``views``: every device the rollout targets or
    has touched; ``metrics``: per device id, what it reported over the gate window."""
    tick = _Tick(rollout, views, metrics, now_ms)
    spec = rollout.spec
    for view in views:
        event = observe(view, spec.version, spec.device_timeout_ms, now_ms)
        if event is not None:
            tick.move(view.device_id, event)
    if tick.rollout.phase == "pending":
        tick.fire(StartShadow() if spec.shadow is not None else Start())
    match tick.rollout.phase:
        case "shadow":
            _shadow_stage(tick)
        case "baking":
            _stage(tick)
        case "awaiting_approval" | "paused":
            _watch(tick)
        case "completed":
            _assign(tick, len(tick.targeted))
    if tick.rollout.phase == "rolling_back":
        _roll_back(tick)
    return tick.result()


class _Tick:
    """Scratch state of one :func:`plan` call."""

    def __init__(
        self,
        rollout: Rollout,
        views: Sequence[DeviceView],
        metrics: Mapping[str, DeviceMetrics],
        now_ms: int,
    ) -> None:
        spec = rollout.spec
        self.rollout = rollout
        self.now = now_ms
        self.metrics = metrics
        self.targeted = sort_by_order(
            spec, [v for v in views if spec.target.matches(v.device_id, v.tags)]
        )
        pins = sum(1 for v in self.targeted if pinned(spec, v.tags)) if spec.canary_tags else 0
        self.quotas = stage_quotas(spec, len(self.targeted), pins)
        self.shadow_quota = shadow_quota(spec, len(self.targeted), pins)
        self.progress: dict[str, DeviceProgress] = {}
        self.shadows: dict[str, ShadowProgress] = {}
        for view in views:
            if view.progress is not None:
                self.progress[view.device_id] = view.progress
            if view.shadow is not None:
                self.shadows[view.device_id] = view.shadow
        self.changed: dict[str, DeviceProgress] = {}
        self.shadow_changed: dict[str, ShadowProgress] = {}
        self.assign: list[str] = []
        self.revert: list[RevertTo] = []
        self.shadow_start: list[str] = []
        self.shadow_stop: list[str] = []
        self.verdicts: list[GateVerdict] = []
        self.timeline: list[str] = []

    def move(self, device_id: str, event: DeviceEvent) -> None:
        current = self.progress.get(device_id) or DeviceProgress(device_id)
        moved = advance(current, event, self.now)
        self.progress[device_id] = self.changed[device_id] = moved

    def fire(self, event: RolloutEvent) -> None:
        before = self.rollout
        self.rollout = step(before, event, self.now)
        why = getattr(event, "reason", "")
        line = f"{type(event).__name__.lower()}: {_where(before)} -> {_where(self.rollout)}"
        self.timeline.append(f"{line} ({why})" if why else line)

    def set_shadow(self, device_id: str, state: str) -> None:
        record = ShadowProgress(device_id, "running" if state == "running" else "stopped", self.now)
        self.shadows[device_id] = self.shadow_changed[device_id] = record
        (self.shadow_start if state == "running" else self.shadow_stop).append(device_id)

    def running_shadows(self) -> list[str]:
        return [
            v.device_id
            for v in self.targeted
            if (s := self.shadows.get(v.device_id)) is not None and s.state == "running"
        ]

    def result(self) -> Plan:
        return Plan(
            rollout=self.rollout,
            assign=tuple(self.assign),
            revert=tuple(self.revert),
            shadow_start=tuple(self.shadow_start),
            shadow_stop=tuple(self.shadow_stop),
            progress=tuple(self.changed[k] for k in sorted(self.changed)),
            shadows=tuple(self.shadow_changed[k] for k in sorted(self.shadow_changed)),
            verdicts=tuple(self.verdicts),
            timeline=tuple(self.timeline),
        )


# ---------------------------------------------------------------- phases


def _stage(tick: _Tick) -> None:
    """A serving stage: judge it, then top it up to its quota."""
    rollout = tick.rollout
    stage = rollout.spec.stages[rollout.stage]
    quota = tick.quotas[rollout.stage]
    resolved = _resolved(tick, quota)
    verdicts = _evaluate(tick, stage.gates, census=resolved)
    if not _judge(tick, stage, verdicts, resolved):
        _assign(tick, quota)
    elif tick.rollout.phase == "baking":  # advanced: start the next stage now
        _assign(tick, tick.quotas[tick.rollout.stage])


def _shadow_stage(tick: _Tick) -> None:
    """The shadow stage: judge the running shadows, then start more up to its quota."""
    shadow = tick.rollout.spec.shadow
    assert shadow is not None  # the phase exists only for specs with a shadow stage
    _stop_stuck_shadows(tick)
    running = tick.running_shadows()
    candidates = [v.device_id for v in tick.targeted if _fresh(tick, v) and v.online]
    resolved = len(running) >= tick.shadow_quota or not candidates
    reports = [tick.metrics.get(d, NO_METRICS) for d in running]
    alpha = tick.rollout.spec.gate_alpha
    verdicts = [evaluate_shadow(g, alpha(g), reports) for g in shadow.gates]
    if _judge(tick, shadow, verdicts, resolved):
        for device_id in running:
            tick.set_shadow(device_id, "stopped")
        if tick.rollout.phase == "baking":
            _assign(tick, tick.quotas[tick.rollout.stage])
        return
    silent = sum(1 for d in running if not sum(tick.metrics.get(d, NO_METRICS).shadow_inputs))
    room = min(tick.shadow_quota - len(running), tick.rollout.spec.max_updating - silent)
    for device_id in candidates[: max(room, 0)]:
        tick.set_shadow(device_id, "running")


def _stop_stuck_shadows(tick: _Tick) -> None:
    """Stop the shadows that will not report, with the reason in the timeline: those their
    devices refused since the shadow started (its assignment or its package), and those
    still without a single shadow input ``device_timeout_ms`` after they started (a
    download the agent keeps retrying, a device with no traffic). The stage does not wait
    for them, and takes another device in their place."""
    version, timeout_ms = tick.rollout.spec.version, tick.rollout.spec.device_timeout_ms
    for view in tick.targeted:
        record, report = tick.shadows.get(view.device_id), view.shadow_report
        if record is None or record.state != "running":
            continue
        if report is not None and (
            report.version != version or report.received_ms < record.since_ms
        ):
            report = None  # of another version, or from before this shadow started
        if report is not None and report.status == "refused":
            tick.set_shadow(view.device_id, "stopped")
            tick.timeline.append(f"shadow {report.status} by {view.device_id}: {report.reason}")
        elif tick.now - record.since_ms >= timeout_ms and not sum(
            tick.metrics.get(view.device_id, NO_METRICS).shadow_inputs
        ):
            tick.set_shadow(view.device_id, "stopped")
            why = f" (last: {report.status}: {report.reason})" if report else ""
            tick.timeline.append(
                f"shadow timed out on {view.device_id}: no shadow inputs in "
                f"{timeout_ms // 1000} s{why}"
            )


def _watch(tick: _Tick) -> None:
    """Awaiting approval or paused: no new devices, but a failing gate still halts."""
    rollout = tick.rollout
    waiting = "awaiting_approval" in (rollout.phase, rollout.paused_from)
    judged = rollout.stage - 1 if waiting else rollout.stage
    if judged == SHADOW_STAGE:
        shadow = rollout.spec.shadow
        if shadow is None or waiting:
            return  # the shadow stage passed and its devices stopped: nothing to watch
        reports = [tick.metrics.get(d, NO_METRICS) for d in tick.running_shadows()]
        alpha = rollout.spec.gate_alpha
        verdicts = [evaluate_shadow(g, alpha(g), reports) for g in shadow.gates]
    else:
        verdicts = _evaluate(tick, rollout.spec.stages[judged].gates, census=False)
    tick.verdicts.extend(verdicts)
    failed = [v for v in verdicts if v.outcome == "fail"]
    if failed:
        tick.fire(Halt(_failures(failed)))


def _roll_back(tick: _Tick) -> None:
    """Send every touched device back; finish once none is on its way anywhere."""
    for device_id in sorted(tick.progress, key=lambda d: (tick.progress[d].stage, d)):
        p = tick.progress[device_id]
        if p.back or p.state in ("pending", "rolled_back"):
            continue
        tick.move(device_id, Revert())
        tick.revert.append(RevertTo(device_id, p.previous_version))
        if p.previous_version is None:
            tick.move(device_id, Reverted())
    for device_id in tick.running_shadows():
        tick.set_shadow(device_id, "stopped")
    settled = all(
        p.state == "rolled_back" or (p.state == "timed_out" and p.back)
        for p in tick.progress.values()
    )
    if settled:
        tick.fire(Finish())


# ---------------------------------------------------------------- decisions


def _judge(
    tick: _Tick, stage: Stage | ShadowStage, verdicts: list[GateVerdict], resolved: bool
) -> bool:
    """Record the verdicts and move the rollout on them; True if it moved."""
    tick.verdicts.extend(verdicts)
    failed = [v for v in verdicts if v.outcome == "fail"]
    if failed:
        tick.fire(Halt(_failures(failed)))
        return True
    rollout = tick.rollout
    if not resolved:
        return False
    if rollout.bake_started_ms is None:
        rollout = tick.rollout = replace(rollout, bake_started_ms=tick.now)
    assert rollout.bake_started_ms is not None
    baked = tick.now - rollout.bake_started_ms
    waiting = [v for v in verdicts if v.outcome != "pass"]
    accepted = rollout.override_stage == rollout.stage
    if baked >= stage.bake_ms and (not waiting or accepted):
        tick.fire(_next(rollout))
        return True
    if baked >= stage.bake_ms + stage.extend_ms:
        names = ", ".join(f"{v.metric} ({v.reason})" for v in waiting)
        tick.fire(Pause(f"inconclusive after the extended bake: {names}"))
        return True
    return False


def _next(rollout: Rollout) -> RolloutEvent:
    if rollout.stage == len(rollout.spec.stages) - 1:
        return Complete()
    return AwaitApproval() if rollout.spec.stages[rollout.stage + 1].approval else Advance()


def _evaluate(tick: _Tick, gates: tuple[GateSpec, ...], *, census: bool) -> list[GateVerdict]:
    spec = tick.rollout.spec
    verdicts: list[GateVerdict] = []
    comparative = [g for g in gates if g.metric in COMPARATIVE]
    if comparative:
        canary_ids, canary_strata, control_ids, control_strata = _arms(tick)
        note = f", stratified by {', '.join(spec.stratify_by)}" if spec.stratify_by else ""
        if not canary_ids:  # the stage's first tick: spare building the control's columns
            for gate in comparative:
                alpha = spec.gate_alpha(gate)
                verdicts.append(no_canaries(gate, alpha, len(control_ids), strata_note=note))
        else:
            canary = Columns.of(canary_ids, tick.metrics, canary_strata)
            control = Columns.of(control_ids, tick.metrics, control_strata)
            for gate in comparative:
                alpha = spec.gate_alpha(gate)
                verdicts.append(
                    evaluate_comparative(gate, alpha, canary, control, strata_note=note)
                )
    for gate in gates:
        if gate.metric == "update_success":
            succeeded = failed = unresolved = 0
            for p in tick.progress.values():
                if p.back or p.state == "rolled_back":
                    continue
                if p.state == "succeeded":
                    succeeded += 1
                elif p.state == "failed" and not _may_retry(tick, p):
                    failed += 1
                else:
                    unresolved += 1
            verdicts.append(
                evaluate_update_success(
                    gate,
                    spec.gate_alpha(gate),
                    succeeded=succeeded,
                    failed=failed,
                    unresolved=unresolved,
                    census=census,
                )
            )
    return verdicts


def _arms(tick: _Tick) -> tuple[list[str], list[int], list[str], list[int]]:
    """Canaries (serving the new version) and control (untouched), with stratum codes."""
    spec = tick.rollout.spec
    codes: dict[tuple[str, ...], int] = {}
    canary: list[str] = []
    control: list[str] = []
    canary_strata: list[int] = []
    control_strata: list[int] = []
    for view in tick.targeted:
        p = tick.progress.get(view.device_id)
        if p is None:
            ids, strata = control, control_strata
        elif p.state == "succeeded":
            ids, strata = canary, canary_strata
        else:
            continue
        ids.append(view.device_id)
        strata.append(codes.setdefault(stratum(spec, view.tags), len(codes)))
    return canary, canary_strata, control, control_strata


def _assign(tick: _Tick, quota: int) -> None:
    """Retries first, then untouched devices in order, up to ``quota`` and the cap."""
    spec = tick.rollout.spec
    updating = sum(1 for p in tick.progress.values() if p.state == "updating")
    room = spec.max_updating - updating
    stage = max(tick.rollout.stage, 0)
    touched = 0
    for view in tick.targeted:
        p = tick.progress.get(view.device_id)
        if p is None:
            continue
        touched += 1
        if room > 0 and view.online and _may_retry(tick, p):
            tick.move(view.device_id, Retry())
            tick.assign.append(view.device_id)
            room -= 1
    for view in tick.targeted:
        if room <= 0 or touched >= quota:
            break
        if view.device_id in tick.progress or not view.online:
            continue
        tick.move(view.device_id, Assign(spec.version, view.active_version, stage))
        tick.assign.append(view.device_id)
        touched += 1
        room -= 1


def _resolved(tick: _Tick, quota: int) -> bool:
    """Nothing of the stage is left to do but wait: no device updating or due a retry,
    and the quota is met or no untouched device is online to meet it."""
    if any(p.state == "updating" for p in tick.progress.values()):
        return False
    touched = 0
    fresh_online = False
    for view in tick.targeted:
        p = tick.progress.get(view.device_id)
        if p is None:
            fresh_online = fresh_online or view.online
            continue
        touched += 1
        if view.online and _may_retry(tick, p):
            return False
    return touched >= quota or not fresh_online


def _may_retry(tick: _Tick, p: DeviceProgress) -> bool:
    if p.back or p.attempts > tick.rollout.spec.retries:
        return False
    return (p.state == "failed" and p.retryable) or p.state == "timed_out"


def _fresh(tick: _Tick, view: DeviceView) -> bool:
    return view.device_id not in tick.progress and view.device_id not in tick.shadows


def _failures(failed: list[GateVerdict]) -> str:
    return "; ".join(f"{v.metric} failed: {v.reason}" for v in failed)


def _where(rollout: Rollout) -> str:
    if rollout.phase in ("baking", "awaiting_approval") or rollout.paused_from == "baking":
        return f"{rollout.phase} stage {rollout.stage + 1}"
    return rollout.phase
