"""Federated rounds, pure core: device deltas in, a candidate version's head and lineage out.

Nothing here does I/O, reads a clock or draws randomness: the store, the scheduler, ingest
and the REST layer call these functions with plain values (time as ``now_ms``). Module map,
in the order a delta meets them:

- :mod:`~hub.rounds.screening`: one upload -> a :class:`Verdict` (accepted / flagged /
  refused, with a reason code), never an exception for peer input;
- :mod:`~hub.rounds.weighting`: capped sample counts, staleness discount, norm bound,
  planned from metadata before any tensor is read;
- :mod:`~hub.rounds.strategies`: the numpy rules (streaming weighted mean, median,
  trimmed mean, Krum/MultiKrum, server momentum);
- :mod:`~hub.rounds.aggregate`: a :class:`Strategy` and :func:`aggregate` over a loader;
- :mod:`~hub.rounds.lifecycle`: the round state table and :func:`plan_close`;
- :mod:`~hub.rounds.buffered`: FedBuff's buffer and :func:`plan_flush`;
- :mod:`~hub.rounds.exact`: sufficient statistics and the ridge solve for linear heads;
- :mod:`~hub.rounds.evaluation`: candidate vs parent metrics, holdout summaries, :func:`judge`;
- :mod:`~hub.rounds.lineage`: the record of what made a candidate;
- :mod:`~hub.rounds.policy`: a model's :class:`ModelPolicy`.

The device side of top-k with error feedback is :mod:`protocol.sparsify`. The design and
the integration plan are in docs/rounds.md.
"""

from hub.rounds.aggregate import PRESETS, Aggregation, Strategy, aggregate
from hub.rounds.buffered import Buffer, BufferPolicy, Flush, Hold, plan_flush, rebase
from hub.rounds.errors import IllegalTransition, InvalidPolicy, NothingToAggregate
from hub.rounds.evaluation import (
    HeadMetrics,
    HoldoutReport,
    HoldoutSummary,
    Judgement,
    evaluate_head,
    judge,
    summarize_holdouts,
)
from hub.rounds.exact import LinearStats, combine, local_stats, merge, solve_ridge
from hub.rounds.layout import Layout, Tensors
from hub.rounds.lifecycle import ClosePolicy, Round, plan_close, step
from hub.rounds.lineage import ContributionRecord, Excluded, Lineage, lineage_of
from hub.rounds.policy import ModelPolicy
from hub.rounds.screening import BaseVersion, OpenSlot, ScreenContext, Verdict, screen
from hub.rounds.weighting import Submission, Weighting, plan_weights, staleness_weight

__all__ = [
    "PRESETS",
    "Aggregation",
    "BaseVersion",
    "Buffer",
    "BufferPolicy",
    "ClosePolicy",
    "ContributionRecord",
    "Excluded",
    "Flush",
    "HeadMetrics",
    "Hold",
    "HoldoutReport",
    "HoldoutSummary",
    "IllegalTransition",
    "InvalidPolicy",
    "Judgement",
    "Layout",
    "Lineage",
    "LinearStats",
    "ModelPolicy",
    "NothingToAggregate",
    "OpenSlot",
    "Round",
    "ScreenContext",
    "Strategy",
    "Submission",
    "Tensors",
    "Verdict",
    "Weighting",
    "aggregate",
    "combine",
    "evaluate_head",
    "judge",
    "lineage_of",
    "local_stats",
    "merge",
    "plan_close",
    "plan_flush",
    "plan_weights",
    "rebase",
    "screen",
    "solve_ridge",
    "staleness_weight",
    "step",
    "summarize_holdouts",
]
