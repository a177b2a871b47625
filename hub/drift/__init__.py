"""Fleet drift and label-free performance: the pure core (docs/drift.md).

Windows become :class:`Aggregate` s (merge laws in :mod:`hub.drift.aggregate`), device
buckets are assessed per closed bucket (:func:`assess`), and :func:`evaluate` plans the
alert actions; :func:`step` is the alert lifecycle. Nothing here reads a clock, a file,
the store or the network: time comes in as ``now_ms``, randomness as a
``numpy.random.Generator``.
"""

from hub.drift.aggregate import Aggregate, empty, from_window, merge, merge_all, seal
from hub.drift.alerts import Alert, Open, Resolve, StartRound, Update, evaluate, step
from hub.drift.assess import Assessment, DeviceBucket, Finding, assess
from hub.drift.buckets import FLEET, BucketKey, Cohort, DeviceBucketKey, Retention, route
from hub.drift.performance import Calibration, choose_calibration, estimate, sketch
from hub.drift.policy import DriftPolicy
from hub.drift.reference import Reference
from hub.drift.scores import FeatureScore, score

__all__ = [
    "FLEET",
    "Aggregate",
    "Alert",
    "Assessment",
    "BucketKey",
    "Calibration",
    "Cohort",
    "DeviceBucket",
    "DeviceBucketKey",
    "DriftPolicy",
    "FeatureScore",
    "Finding",
    "Open",
    "Reference",
    "Resolve",
    "Retention",
    "StartRound",
    "Update",
    "assess",
    "choose_calibration",
    "empty",
    "estimate",
    "evaluate",
    "from_window",
    "merge",
    "merge_all",
    "route",
    "score",
    "seal",
    "sketch",
    "step",
]
