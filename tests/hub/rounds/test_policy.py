"""Model policies: stored as JSON, refused when they contradict themselves or the memory."""

from __future__ import annotations

import pytest

from hub.rounds.aggregate import PRESETS
from hub.rounds.buffered import BufferPolicy
from hub.rounds.errors import InvalidPolicy
from hub.rounds.lifecycle import ClosePolicy
from hub.rounds.policy import ModelPolicy
from protocol import canonical


def test_the_default_policy_is_rounds_with_norm_bounding_and_the_weighted_mean() -> None:
    policy = ModelPolicy()
    assert (policy.mode, policy.strategy.name) == ("rounds", "normbound(q=0.5)+mean")


def test_a_policy_round_trips_through_canonical_json() -> None:
    policy = ModelPolicy(
        mode="buffered",
        strategy=PRESETS["trimmed_mean"],
        buffer=BufferPolicy(size=8, max_staleness=2),
        close=ClosePolicy(5, 20, 600_000),
        margin=0.01,
    )
    assert ModelPolicy.from_json(canonical.loads(canonical.dumps(policy.to_json()))) == policy


def test_a_median_over_a_big_head_is_refused_before_the_round_starts() -> None:
    policy = ModelPolicy(strategy=PRESETS["median"], close=ClosePolicy(10, 1000))
    with pytest.raises(InvalidPolicy, match="MiB"):
        policy.check(n_parameters=1_000_000)
    ModelPolicy(close=ClosePolicy(10, 1000)).check(n_parameters=1_000_000)  # streaming fits


def test_buffered_mode_checks_the_buffer_size_not_the_round_target() -> None:
    policy = ModelPolicy(mode="buffered", strategy=PRESETS["median"], close=ClosePolicy(10, 10_000))
    policy.check(n_parameters=1_000_000)


@pytest.mark.parametrize(
    "knobs", [{"mode": "async"}, {"max_norm": 0.0}, {"margin": 1.5}, {"exact_min_rows": 0}]
)
def test_nonsense_policies_are_refused(knobs: dict) -> None:
    with pytest.raises(InvalidPolicy):
        ModelPolicy(**knobs)


def test_a_stored_policy_with_contradicting_numbers_is_refused() -> None:
    record = ModelPolicy().to_json()
    record["close"]["min_deltas"] = 100
    with pytest.raises(InvalidPolicy, match="min_deltas"):
        ModelPolicy.from_json(record)
