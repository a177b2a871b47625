"""A model's federated-learning policy: how its deltas become candidate versions.

One :class:`ModelPolicy` per model, stored as JSON beside the model (round-trip law:
``ModelPolicy.from_json(p.to_json()) == p``). It names the mode, the strategy, when
rounds close or buffers flush, the delta norm bound (pushed to devices as
``DeviceConfig.delta_clip_norm`` and enforced by screening) and the release rule.

:meth:`ModelPolicy.check` refuses a policy that cannot run on a head of a given size:
a rank-based strategy (median, trimmed mean, Krum) holds every delta of a round at
once, so its estimated memory for ``target_deltas`` (or the buffer size) deltas must
fit ``memory_budget_bytes``; the streaming mean always fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from hub.rounds.aggregate import PRESETS, Strategy
from hub.rounds.buffered import BufferPolicy
from hub.rounds.errors import InvalidPolicy
from hub.rounds.lifecycle import ClosePolicy
from protocol import schema

PolicyMode = Literal["rounds", "buffered", "exact"]
DEFAULT_MEMORY_BUDGET = 2 * 1024**3


@dataclass(frozen=True)
class ModelPolicy:
    """How a model's deltas are aggregated and its candidates released.

    ``mode``: ``rounds`` (synchronous rounds on one base), ``buffered`` (FedBuff) or
    ``exact`` (rounds of sufficient statistics, linear heads only). ``margin``: what a
    candidate must gain over its parent on the validation set (0.01 = one point of
    accuracy, or 1% of mse). ``auto_release``: sign and release a passing candidate
    when the release key is on the hub; otherwise it waits for ``edgefleet keys
    sign-release``. ``exact_l2`` and ``exact_min_rows``: exact mode's ridge penalty and
    the fewest rows a device's statistics may summarise. ``every_ms``: open a round on
    the latest release this long after the last one opened (``None``: only operators and
    drift alerts open rounds).
    """

    mode: PolicyMode = "rounds"
    strategy: Strategy = field(default_factory=lambda: PRESETS["default"])
    close: ClosePolicy = field(default_factory=ClosePolicy)
    buffer: BufferPolicy = field(default_factory=BufferPolicy)
    max_norm: float = 10.0
    margin: float = 0.0
    auto_release: bool = False
    exact_l2: float = 1e-3
    exact_min_rows: int = 32
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET
    every_ms: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("rounds", "buffered", "exact"):
            raise InvalidPolicy(f"mode {self.mode!r} must be rounds, buffered or exact")
        if not 0.0 < self.max_norm < math.inf:
            raise InvalidPolicy(f"max_norm {self.max_norm} must be positive and finite")
        if not 0.0 <= self.margin < 1.0:
            raise InvalidPolicy(f"margin {self.margin} must be in [0, 1)")
        if not 0.0 <= self.exact_l2 < math.inf or self.exact_min_rows < 1:
            raise InvalidPolicy("exact_l2 must be >= 0 and exact_min_rows >= 1")
        if self.memory_budget_bytes < 1:
            raise InvalidPolicy("memory_budget_bytes must be positive")
        if self.every_ms is not None and self.every_ms < 1000:
            raise InvalidPolicy(f"every_ms {self.every_ms} must be at least 1000 (one second)")
        if self.every_ms is not None and self.mode == "buffered":
            raise InvalidPolicy("a buffered model has no rounds to schedule: drop every_ms")

    @property
    def deltas_per_aggregation(self) -> int:
        """The most deltas one aggregation reads: a full round, or one buffer."""
        return self.buffer.size if self.mode == "buffered" else self.close.target_deltas

    def check(self, n_parameters: int) -> None:
        """Refuse the policy for a head of ``n_parameters`` if it cannot run in budget.

        Raises:
            InvalidPolicy: the strategy's memory exceeds the budget.
        """
        need = self.strategy.memory_bytes(self.deltas_per_aggregation, n_parameters)
        if need > self.memory_budget_bytes:
            raise InvalidPolicy(
                f"{self.strategy.name} over {self.deltas_per_aggregation} deltas of "
                f"{n_parameters} parameters needs about {need / 2**20:.0f} MiB, over the "
                f"budget of {self.memory_budget_bytes / 2**20:.0f} MiB: use the default "
                "(streaming) strategy or fewer deltas per aggregation"
            )

    def to_json(self) -> dict[str, Any]:
        result: dict[str, Any] = schema.to_json(self)
        return result

    @classmethod
    def from_json(cls, value: object) -> ModelPolicy:
        """Raises: Malformed (structure) or InvalidPolicy (contradicting numbers)."""
        return schema.from_json(cls, value, path="policy")


__all__ = ["DEFAULT_MEMORY_BUDGET", "ModelPolicy", "PolicyMode"]
