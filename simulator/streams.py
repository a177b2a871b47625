"""The full-loop demo's data: sensors whose quiet channels wake up in one cohort.

A fleet of devices reads ``n_features`` numeric sensors and classifies each reading into
one of ``n_classes`` (the true rule: ``argmax(x @ rule)``, plus ``noise`` random labels).
Every channel matters to the rule, but when v1 was trained the last channels (``quiet``,
f8 and f9 by default) barely moved (standard deviation ``quiet_sd``), so v1 learned to
ignore them: its logits are ``scale * x @ rule`` with those rows of ``rule`` zeroed.

Drift (covariate, in one cohort): the quiet channels of the drifted devices start moving
(standard deviation ``drift_sd``, e.g. a sensor swapped for a wider-range model). Their
readings leave v1's reference range, so the hub's drift job sees exactly those features in
exactly that cohort; v1, blind to them, loses accuracy there, while its predictions' mix
barely moves. A head retrained on labelled rows learns the quiet channels' weights: because
the rule is the same everywhere, that head is right for every cohort, which is what makes a
federated candidate better for the whole fleet, not only the drifted cohort.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from simulator.task import classifier


@dataclass(frozen=True)
class SensorTask:
    """v1's ONNX bytes and what draws readings and labels (module docstring)."""

    model: bytes
    informed: bytes
    """A v2 fitted when the quiet sensors moved too: the whole rule, right everywhere."""
    rule: np.ndarray
    quiet: tuple[int, ...]
    quiet_sd: float
    drift_sd: float
    noise: float

    @classmethod
    def build(
        cls,
        *,
        seed: int = 0,
        n_features: int = 10,
        n_classes: int = 3,
        width: int = 32,
        quiet: tuple[int, ...] = (8, 9),
        quiet_sd: float = 0.2,
        drift_sd: float = 2.5,
        noise: float = 0.03,
        scale: float = 4.0,
    ) -> SensorTask:
        """``width`` hidden units (the head sees ``2 * width`` features: every linear rule of
        the inputs is within a retrained head's reach)."""
        rng = np.random.default_rng(seed)
        v = rng.normal(size=(n_features, width)) / np.sqrt(n_features)
        c = rng.normal(size=width) * 0.1
        rule = rng.normal(size=(n_features, n_classes))
        learned = rule.copy()
        learned[list(quiet)] = 0.0  # what the training data could teach v1
        return cls(
            classifier(v, c, learned, scale), classifier(v, c, rule, scale), rule, quiet,
            quiet_sd, drift_sd, noise,
        )  # fmt: skip

    @property
    def n_features(self) -> int:
        return int(self.rule.shape[0])

    @property
    def n_classes(self) -> int:
        return int(self.rule.shape[1])

    @property
    def feature_names(self) -> list[str]:
        """How the hub names the drifted features (``f<index>``)."""
        return [f"f{i}" for i in self.quiet]

    def sample(
        self, rows: int, rng: np.random.Generator, *, drifted: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """``rows`` readings (float32 ``[rows, n_features]``) and their true classes."""
        x = rng.normal(size=(rows, self.n_features))
        x[:, list(self.quiet)] *= self.drift_sd if drifted else self.quiet_sd
        y = np.argmax(x @ self.rule, axis=1)
        flip = rng.random(rows) < self.noise
        y[flip] = rng.integers(0, self.n_classes, size=int(flip.sum()))
        return x.astype(np.float32), y.astype(np.int64)


def broken(model: bytes, features: tuple[int, ...], above: float) -> bytes:
    """``model`` whose scores turn NaN for rows with ``|x[f]| > above`` for any ``f`` of
    ``features`` (``+ 0 * sqrt(above - |x[f]|)``): healthy on the reference, where those
    sensors are quiet, and on its smoke inputs, failing on the drifted cohort's readings.
    The bad-model-rollout scenario rolls it out."""
    proto = onnx.load_from_string(model)
    graph = proto.graph
    [output] = [n for n in graph.node if n.output[0] == "probabilities"]
    output.output[0] = "scores"
    index = np.asarray(features, np.int64)
    graph.initializer.extend(
        [
            numpy_helper.from_array(index, "broken.features"),
            numpy_helper.from_array(np.array(above, np.float32), "broken.above"),
            numpy_helper.from_array(np.array(0.0, np.float32), "broken.zero"),
            numpy_helper.from_array(np.array([1], np.int64), "broken.axes"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Gather", ["x", "broken.features"], ["broken.x"], axis=1),
            helper.make_node("Abs", ["broken.x"], ["broken.abs"]),
            helper.make_node("Sub", ["broken.above", "broken.abs"], ["broken.room"]),
            helper.make_node("Sqrt", ["broken.room"], ["broken.root"]),
            helper.make_node("Mul", ["broken.root", "broken.zero"], ["broken.nan"]),
            helper.make_node(
                "ReduceSum", ["broken.nan", "broken.axes"], ["broken.row"], keepdims=1
            ),
            helper.make_node("Add", ["scores", "broken.row"], ["probabilities"]),
        ]
    )
    onnx.checker.check_model(proto)
    data: bytes = proto.SerializeToString()
    return data
