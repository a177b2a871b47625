"""The staged-rollout planner's inputs, read from the store (docs/rollouts.md, "Building
the planner's inputs").

:func:`device_views` gives one :class:`~hub.rollouts.DeviceView` per active device the
rollout targets or has touched: its tags, whether the hub holds it online, the version
of the rollout's model it reports active, its last install outcome for that model (with
when the hub received it, so an outcome older than the current attempt is never taken
for its result), whether it still watches the version it swapped to, and the rollout's
records for it.

:func:`device_metrics` sums, per device, the data windows it sent since the stage began
about the version it runs *now*: canaries count only what they served on the new
version, the control only what it served on the old one, over the same window. Labelled
feedback comes from each window's confidence sketch (``labelled`` and ``correct`` summed
over its bins: labels counted in the window they arrived in). A device running the
rollout's version as a shadow (the shadow stage) reports it in its windows' ``shadow``
(``DataDelta.shadow``): per class of the served model, the sampled inputs and how many
the shadow agreed on, summed into ``shadow_inputs`` and ``shadow_agreed`` when the report
names the rollout's version. With a ``prediction_drift`` or ``label_free_accuracy`` gate,
each device's predictions are scored against a reference and its confidence sketches
averaged (:mod:`hub.fleet.rollout_drift`).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from hub.drift.errors import UnusableReference
from hub.fleet import rollout_drift
from hub.monitor.references import References, policy
from hub.rollouts import DeviceMetrics, DeviceView, InstallReport, Rollout
from hub.rollouts.devices import FAILED_INSTALLS
from hub.rollouts.machine import LIVE
from hub.rollouts.spec import COMPARATIVE
from hub.store import NotFound, Store
from hub.store.rows import DataWindowRecord, Device


def device_views(store: Store, rollout: Rollout) -> list[DeviceView]:
    """Every active device the rollout targets or has a record of (module docstring)."""
    spec = rollout.spec
    progress = {p.device_id: p for p in store.rollouts.progress(rollout.rollout_id)}
    shadows = {s.device_id: s for s in store.rollouts.shadows(rollout.rollout_id)}
    views = []
    for device in store.rollouts.active_devices():
        touched = device.id in progress or device.id in shadows
        if not touched and not spec.target.matches(device.id, device.tags):
            continue
        views.append(
            DeviceView(
                device_id=device.id,
                tags=device.tags,
                online=device.online,
                active_version=device.active_version if device.active_name == spec.model else None,
                report=_install_report(device, spec.model),
                watching=_watching(device, spec.model),
                progress=progress.get(device.id),
                shadow=shadows.get(device.id),
                shadow_report=_shadow_report(device, spec.model),
            )
        )
    return views


def _install_report(device: Device, model: str) -> InstallReport | None:
    """The device's last install outcome for ``model`` if it ended an attempt."""
    if device.reported is None or device.reported_at is None:
        return None
    install = json.loads(device.reported).get("install")
    if not isinstance(install, dict) or install.get("status") not in FAILED_INSTALLS:
        return None
    ref = install.get("model") or {}
    if ref.get("name") != model or not isinstance(ref.get("version"), int):
        return None
    return InstallReport(
        version=ref["version"],
        status=install["status"],
        reason=str(install.get("reason", "")),
        received_ms=device.reported_at,
    )


def _shadow_report(device: Device, model: str) -> InstallReport | None:
    """Why the device does not run its shadow of ``model`` (its state report's
    ``shadow``: refused or failed), with when the hub received it."""
    if device.reported is None or device.reported_at is None:
        return None
    shadow = json.loads(device.reported).get("shadow")
    if not isinstance(shadow, dict) or shadow.get("status") not in ("refused", "failed"):
        return None
    ref = shadow.get("model") or {}
    if ref.get("name") != model or not isinstance(ref.get("version"), int):
        return None
    return InstallReport(
        version=ref["version"],
        status=shadow["status"],
        reason=str(shadow.get("reason", "")),
        received_ms=device.reported_at,
    )


def _watching(device: Device, model: str) -> bool:
    """Whether the device still watches the version of ``model`` it swapped to (the
    agent reports ``installed`` with the reason ``watching`` until its watch window ends
    in a commit or a rollback)."""
    if device.reported is None or device.active_name != model:
        return False
    install = json.loads(device.reported).get("install")
    if not isinstance(install, dict) or install.get("status") != "installed":
        return False
    ref = install.get("model") or {}
    return (
        install.get("reason") == "watching"
        and ref.get("name") == model
        and ref.get("version") == device.active_version
    )


def needs_metrics(rollout: Rollout) -> bool:
    """Whether any gate of the rollout compares devices' reports or reads the shadow's
    (else the windows are not read at all: a rollout gated on update success alone costs
    no window reads)."""
    metrics = rollout.spec.metrics
    return bool(metrics & COMPARATIVE) or "shadow_agreement" in metrics


def device_metrics(
    store: Store, rollout: Rollout, views: list[DeviceView]
) -> Mapping[str, DeviceMetrics]:
    """Per device id, what it reported since the stage began on the version it runs now."""
    if not needs_metrics(rollout):
        return {}
    running = {v.device_id: v.active_version for v in views if v.active_version is not None}
    windows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    since = rollout.stage_started_ms
    for record in store.rollouts.windows(rollout.spec.model, since_ms=since):
        if record.model_version is not None and running.get(record.device_id) == (
            record.model_version
        ):
            windows[record.device_id].append(_body(record))
    shadow = (rollout.spec.model, rollout.spec.version)
    metrics = {device_id: _summed(bodies, shadow) for device_id, bodies in windows.items()}
    if rollout.spec.metrics & DRIFT_METRICS:
        metrics = _with_drift(store, rollout, views, windows, metrics)
    return metrics


DRIFT_METRICS = frozenset({"prediction_drift", "label_free_accuracy"})


def _with_drift(
    store: Store,
    rollout: Rollout,
    views: list[DeviceView],
    windows: Mapping[str, list[dict[str, Any]]],
    metrics: Mapping[str, DeviceMetrics],
) -> dict[str, DeviceMetrics]:
    """``metrics`` with each device's prediction drift and label-free accuracy."""
    spec = rollout.spec
    by_id = {v.device_id: v for v in views}
    groups: dict[int, dict[str, rollout_drift.PredictionSums]] = defaultdict(dict)
    for device_id, bodies in windows.items():
        sums = rollout_drift.summed_predictions(bodies)
        view = by_id[device_id]
        if sums is None or view.active_version is None:
            continue
        progress = view.progress
        previous = None
        if progress is not None and view.active_version == spec.version:
            previous = progress.previous_version
        groups[rollout_drift.reference_version(sums.kind, view.active_version, previous)][
            device_id
        ] = sums
    drift: dict[str, float] = {}
    references, drift_policy = References(store), policy(store, spec.model)
    for version, sums_by_device in groups.items():
        try:
            reference = references.of(spec.model, version).reference
        except (NotFound, UnusableReference):
            continue  # no profile to score against: the gate stays inconclusive
        drift.update(rollout_drift.prediction_drift(sums_by_device, reference, drift_policy))
    return {
        device_id: replace(
            m,
            prediction_drift=drift.get(device_id),
            label_free_accuracy=rollout_drift.label_free_accuracy(windows[device_id]),
        )
        for device_id, m in metrics.items()
    }


def _body(record: DataWindowRecord) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(record.body)
    return body


def _shadow_sums(
    bodies: list[dict[str, Any]], shadow: tuple[str, int]
) -> tuple[list[int], list[int]]:
    """Per served class, the shadow's sampled inputs and agreements, over the windows
    whose shadow report is of the ``shadow`` model version."""
    inputs: list[int] = []
    agreed: list[int] = []
    for body in bodies:
        report = body.get("shadow") or {}
        model = report.get("model") or {}
        if (model.get("name"), model.get("version")) != shadow:
            continue
        for c, (n, a) in enumerate(zip(report["inputs"], report["agreed"], strict=True)):
            if c == len(inputs):
                inputs.append(0)
                agreed.append(0)
            inputs[c] += int(n)
            agreed[c] += min(int(a), int(n))
    return inputs, agreed


def _summed(bodies: list[dict[str, Any]], shadow: tuple[str, int]) -> DeviceMetrics:
    inferences = sum(int(b.get("inference_count", 0)) for b in bodies)
    errors = min(sum(int(b.get("error_count", 0)) for b in bodies), inferences)
    p95s = [
        float(b["latency_p95_ms"])
        for b in bodies
        if int(b.get("inference_count", 0)) > 0 and float(b.get("latency_p95_ms") or 0) > 0
    ]
    total = correct = 0
    for body in bodies:  # labels counted in the window they arrived in (docs/drift.md)
        sketch = body.get("confidence") or {}
        total += sum(int(n) for n in sketch.get("labelled") or ())
        correct += sum(int(n) for n in sketch.get("correct") or ())
    correct = min(correct, total)
    shadow_inputs, shadow_agreed = _shadow_sums(bodies, shadow)
    return DeviceMetrics(
        inferences=inferences,
        errors=errors,
        latency_p95_ms=statistics.median(p95s) if p95s else None,
        feedback_total=total,
        feedback_correct=correct,
        shadow_inputs=tuple(shadow_inputs),
        shadow_agreed=tuple(shadow_agreed),
    )


def covering(store: Store, device_id: str, model: str) -> Rollout | None:
    """The live rollout of ``model`` whose target matches the device or that has touched
    it, if any: its desired state for that model is the rollout's to set."""
    device = store.devices.find(device_id)
    for record in store.rollouts.ticking():
        rollout = record.rollout
        if rollout.phase not in LIVE or rollout.spec.model != model:
            continue
        if device is not None and rollout.spec.target.matches(device_id, device.tags):
            return rollout
        if any(p.device_id == device_id for p in store.rollouts.progress(rollout.rollout_id)):
            return rollout
    return None
