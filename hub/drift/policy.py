"""Per-model drift thresholds: when a score is data, a warning, an alert, or quiet again.

Every number has its unit or its meaning in the name or the comment; the defaults are the
ones the design (docs/drift.md) argues for. A policy is validated once, where it is loaded
(store, REST body, TOML), and passed into the pure functions.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from hub.errors import InvalidRequest


@dataclass(frozen=True)
class DriftPolicy:
    """Thresholds for one model (defaults in docs/drift.md, "Alerts")."""

    bucket_ms: int = 300_000
    """Width of the base buckets; roll-ups are 1 h and 1 day."""
    min_rows: int = 20
    """Fewer finite rows than this in a window set is "not enough data"."""
    min_expected: float = 5.0
    """Smallest expected count per cell of the χ² test (Cochran's 5); thinner bins are pooled."""
    warn_alpha: float = 0.001
    """A distribution is significant beyond its no-drift 99.9th percentile."""
    psi_warn: float = 0.1
    psi_alert: float = 0.25
    alert_window: int = 3
    alert_hits: int = 2
    """An alert needs alert-level evidence in ``alert_hits`` of the last ``alert_window``
    buckets."""
    device_alpha: float = 0.01
    """Per-device significance level of the drifting-device fraction."""
    fraction_alpha: float = 0.001
    """Family-wise level per bucket of the binomial tests of that fraction against chance
    (Bonferroni over the cohorts and rows tested in the bucket)."""
    min_excess_fraction: float = 0.02
    """...and the fraction must exceed ``device_alpha`` by this much (an effect size)."""
    min_devices: int = 10
    """Fewer devices with enough data is "not enough data" for the fraction."""
    out_of_range_warn: float = 0.01
    out_of_range_alert: float = 0.05
    nan_tolerance: float = 0.001
    """NaN share a healthy device may show; the NaN test is against this rate."""
    nan_warn: float = 0.01
    nan_alert: float = 0.05
    resolve_alpha: float = 0.01
    hysteresis: float = 0.8
    """A feature is quiet when its p-value is above ``resolve_alpha`` or its effect is
    below ``hysteresis`` times the warning threshold: a score hovering at a threshold
    keeps an open alert open instead of flapping."""
    resolve_after: int = 3
    """Quiet buckets in a row (with enough data) before an alert resolves."""
    accuracy_drop_warn: float = 0.05
    accuracy_drop_alert: float = 0.10
    """Estimated (label-free) accuracy this far below the reference accuracy."""
    performance_alpha: float = 0.001
    min_labelled: int = 30
    """Labelled feedback rows needed to compare feedback accuracy with the estimate."""
    retrain_on_alert: bool = False
    """Ask for a federated round when a drift or performance alert opens."""

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, bool):
                continue
            if not isinstance(value, int | float) or value != value or value < 0:
                raise InvalidRequest(f"drift policy {spec.name} must be a number >= 0")
        for name in (
            "warn_alpha",
            "device_alpha",
            "fraction_alpha",
            "resolve_alpha",
            "performance_alpha",
            "nan_tolerance",
            "hysteresis",
        ):
            if not 0 < getattr(self, name) < 1:
                raise InvalidRequest(f"drift policy {name} must be in (0, 1)")
        if self.bucket_ms < 1000 or 3_600_000 % self.bucket_ms or self.min_rows < 2:
            raise InvalidRequest(
                "drift policy needs bucket_ms >= 1000 dividing an hour, min_rows >= 2"
            )
        if self.min_expected <= 0:
            raise InvalidRequest("drift policy min_expected must be > 0")
        if not 1 <= self.alert_hits <= self.alert_window or self.resolve_after < 1:
            raise InvalidRequest("drift policy needs 1 <= alert_hits <= alert_window")
        if self.psi_alert < self.psi_warn or self.out_of_range_alert < self.out_of_range_warn:
            raise InvalidRequest("drift policy alert thresholds must not be below warnings")
        if self.nan_alert < self.nan_warn or self.accuracy_drop_alert < self.accuracy_drop_warn:
            raise InvalidRequest("drift policy alert thresholds must not be below warnings")

    @property
    def history(self) -> int:
        """Scored buckets :func:`hub.drift.alerts.evaluate` needs, newest last."""
        return max(self.alert_window, self.resolve_after)


__all__ = ["DriftPolicy"]
