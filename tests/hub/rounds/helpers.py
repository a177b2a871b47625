"""Small builders the rounds tests share: heads of each task and a round of random deltas."""

from __future__ import annotations

import numpy as np

from hub.rounds.layout import Layout
from hub.rounds.weighting import Submission
from protocol.manifest import Head
from protocol.tensors import l2_norm

LAYOUT = Layout.from_shapes({"b": (3,), "w": (5, 3)})


def make_head(task: str = "classification", n_features: int = 5, n_outputs: int = 3) -> Head:
    activation = {"classification": "softmax", "regression": "identity"}[task]
    if task == "classification" and n_outputs == 1:
        activation = "sigmoid"
    return Head(
        kind="gemm",
        node="head",
        weight="w",
        bias="b",
        feature="x",
        activation=activation,  # type: ignore[arg-type]
        task=task,  # type: ignore[arg-type]
        n_features=n_features,
        n_outputs=n_outputs,
    )


def make_round(n: int, seed: int) -> tuple[list[Submission], dict[str, dict[str, np.ndarray]]]:
    """``n`` random deltas of :data:`LAYOUT` with their submissions (claims 50-149)."""
    rng = np.random.default_rng(seed)
    deltas, subs = {}, []
    for i in range(n):
        delta = {name: rng.normal(size=shape).astype(np.float32) for name, shape in LAYOUT.shapes}
        key = f"d{i}:7"
        deltas[key] = delta
        subs.append(Submission(key, f"d{i}", 1, int(rng.integers(50, 150)), l2_norm(delta)))
    return subs, deltas
