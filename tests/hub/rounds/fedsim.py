"""A pure federated simulation: the real trainer on devices, the real hub core in between.

Devices run :func:`agent.trainer.train_head` (projected SGD within the clip norm, as the
agent does) on their own slice of :class:`simulator.task.ShiftedTask`'s distribution B,
encode the clipped delta with :mod:`protocol.tensors` into a
:class:`~protocol.messages.DeltaUpload`, and the hub side screens it
(:func:`hub.rounds.screening.screen`) and aggregates what it accepts
(:func:`hub.rounds.aggregate.aggregate`). Only the transport, the store and the clock are
left out, so the numbers here are the ones the real loop can reach.

Slices are non-IID two ways: each device draws its labels from its own Dirichlet(alpha)
class mix (alpha = 1 by default) and sees its own shift of the inputs. The validation
set is the fleet's mixture (every device's distribution, equally), and the *central*
head is the same trainer run on the union of all devices' rows: the upper bound a
federation aims for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from agent.trainer import train_head
from hub.rounds.aggregate import Aggregation, Strategy, aggregate
from hub.rounds.evaluation import evaluate_head, judge
from hub.rounds.layout import Layout
from hub.rounds.screening import BaseVersion, Verdict
from hub.rounds.strategies import weighted_mean
from hub.rounds.weighting import Submission
from protocol.headparams import read_head
from protocol.heads import find_head
from protocol.manifest import Head
from protocol.messages import DeltaUpload, ModelRef
from protocol.tensors import clip_l2, encode_tensors
from simulator.task import ShiftedTask

Params = tuple[np.ndarray, np.ndarray]
Delta = dict[str, np.ndarray]
SHA = "5e" * 32
CLIP_NORM = 10.0  # protocol.messages.DeviceConfig.delta_clip_norm's default


@dataclass(frozen=True)
class TrainSettings:
    """The local trainer's knobs: agent.learner.LearnerSettings' defaults."""

    epochs: int = 30
    lr: float = 0.5
    batch_size: int = 32
    holdout_fraction: float = 0.25


@dataclass
class Fleet:
    """The task, the base head, every device's rows, the fleet validation set (where
    accuracy is measured) and the hub's own, smaller, held-out set (what the release
    gate judges candidates on: never the set the numbers are reported on)."""

    head: Head
    layout: Layout
    base: Params
    devices: list[tuple[np.ndarray, np.ndarray]]
    validation: tuple[np.ndarray, np.ndarray]
    hub_set: tuple[np.ndarray, np.ndarray]
    train: TrainSettings = field(default_factory=TrainSettings)

    @classmethod
    def build(
        cls,
        *,
        seed: int = 0,
        n_devices: int = 30,
        rows: int = 200,
        width: int = 64,
        n_classes: int = 5,
        device_shift: float = 0.25,
        alpha: float = 1.0,
        train: TrainSettings | None = None,
    ) -> Fleet:
        task = ShiftedTask.build(seed=seed, n_inputs=8, width=width, n_classes=n_classes)
        head = find_head(task.model)
        assert head is not None
        inits = {
            t.name: numpy_helper.to_array(t)
            for t in onnx.load_from_string(task.model).graph.initializer
        }

        def features(x: np.ndarray) -> np.ndarray:
            out: np.ndarray = np.maximum(x @ inits["w1"] + inits["b1"], 0.0)
            return out

        rng = np.random.default_rng(seed + 1)
        devices, shifts, mixes = [], [], []
        for _ in range(n_devices):
            mix = rng.dirichlet([alpha] * n_classes)
            shift = rng.normal(scale=device_shift, size=8)
            x, y = _draw(task, rng, rows, shift, mix)
            devices.append((features(x), y))
            shifts.append(shift)
            mixes.append(mix)

        def mixture(rows_per_device: int) -> tuple[np.ndarray, np.ndarray]:
            drawn = [
                _draw(task, rng, rows_per_device, shift, mix)
                for shift, mix in zip(shifts, mixes, strict=True)
            ]
            x = features(np.vstack([x for x, _ in drawn]))
            return x, np.concatenate([y for _, y in drawn])

        weight, bias = read_head(task.model, head)
        return cls(
            head,
            Layout.of_head(head),
            (weight.astype(np.float64), bias.astype(np.float64)),
            devices,
            mixture(4000 // n_devices),
            mixture(1000 // n_devices),
            train or TrainSettings(),
        )

    def accuracy(self, params: Params) -> float:
        return evaluate_head(self.head, *params, *self.validation).value

    def passes_gate(self, candidate: Params, parent: Params, margin: float = 0.0) -> bool:
        """The release rule: the candidate beats its parent on the hub's own set."""
        scores = [evaluate_head(self.head, *p, *self.hub_set) for p in (candidate, parent)]
        return judge(*scores, margin=margin).passed

    def local_delta(self, params: Params, device: int, seed: int) -> tuple[Delta, int]:
        """One device's clipped delta from ``params`` and the rows it trained on."""
        x, y = self.devices[device]
        s = self.train
        result = train_head(
            self.head, *params, x, y,
            rng=np.random.default_rng(seed), epochs=s.epochs, lr=s.lr,
            batch_size=s.batch_size, holdout_fraction=s.holdout_fraction, max_distance=CLIP_NORM,
        )  # fmt: skip
        raw = {
            self.head.weight: result.weight.astype(np.float64) - params[0],
            self.head.bias or "bias": result.bias.astype(np.float64) - params[1],
        }
        return clip_l2(raw, CLIP_NORM), result.n_train

    def central(self, seed: int = 0) -> Params:
        """The same trainer on the union of every device's rows: the upper bound. The
        best on validation of three step sizes, so the bound is not lowered by one
        step size that suits small local sets better than the union."""
        x = np.vstack([x for x, _ in self.devices])
        y = np.concatenate([y for _, y in self.devices])
        s = self.train
        heads = []
        for lr in (s.lr, s.lr / 5, s.lr / 10):
            result = train_head(
                self.head, *self.base, x, y,
                rng=np.random.default_rng(seed), epochs=s.epochs, lr=lr,
                batch_size=s.batch_size, holdout_fraction=0.05,
            )  # fmt: skip
            heads.append((result.weight.astype(np.float64), result.bias.astype(np.float64)))
        return max(heads, key=self.accuracy)

    def apply(self, params: Params, update: Delta) -> Params:
        return params[0] + update[self.head.weight], params[1] + update[self.head.bias or "bias"]

    def upload(self, delta: Delta, version: int, samples: int, round_id: str | None) -> DeltaUpload:
        return DeltaUpload(
            base=ModelRef("task", version, SHA),
            num_samples=samples,
            metric="accuracy",
            before=0.0,
            after=0.0,
            clip_norm=CLIP_NORM,
            tensors=encode_tensors(delta),
            round_id=round_id,
        )

    def base_version(self, version: int, max_norm: float = CLIP_NORM) -> BaseVersion:
        return BaseVersion("task", version, SHA, True, self.layout, max_norm)


def _draw(
    task: ShiftedTask, rng: np.random.Generator, rows: int, shift: np.ndarray, mix: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` of distribution B with an extra input shift, resampled to the class mix."""
    x, y = task.sample("B", rows * 8, rng)
    x = x + shift.astype(np.float32)
    y = np.argmax(x @ task.rule_b, axis=1)
    noisy = rng.random(len(y)) < task.noise
    y[noisy] = rng.integers(0, task.n_classes, size=int(noisy.sum()))
    p = mix[y] / mix[y].sum()
    chosen = rng.choice(len(y), size=rows, replace=False, p=p)
    return x[chosen], y[chosen]


# ---------------------------------------------------------------- attacks

Attack = Callable[[Delta, int, Delta], tuple[Delta, int]]
"""An attacker's rewrite of its honest delta and sample count, knowing the mean of the
honest deltas of the round (colluding attackers can estimate it; here they know it)."""


def honest(delta: Delta, samples: int, benign_mean: Delta) -> tuple[Delta, int]:
    return delta, samples


def sign_flip(delta: Delta, samples: int, benign_mean: Delta) -> tuple[Delta, int]:
    """The scaled sign flip: -5 x the honest mean, kept within the hub's bound so that
    screening cannot refuse it (Fang et al. 2020's direction, at the largest norm that
    passes)."""
    return clip_l2({k: -5.0 * v for k, v in benign_mean.items()}, CLIP_NORM * 0.999), samples


def own_sign_flip(delta: Delta, samples: int, benign_mean: Delta) -> tuple[Delta, int]:
    """Each attacker sends its own honest delta reversed: a plausible non-IID delta."""
    return {k: -v for k, v in delta.items()}, samples


def scaled_50x(delta: Delta, samples: int, benign_mean: Delta) -> tuple[Delta, int]:
    return {k: 50.0 * v for k, v in delta.items()}, samples


def claims_a_billion(delta: Delta, samples: int, benign_mean: Delta) -> tuple[Delta, int]:
    return delta, 10**9


ATTACKS: dict[str, Attack] = {
    "sign_flip": sign_flip,
    "scaled_50x": scaled_50x,
    "claims_1e9": claims_a_billion,
}


# ---------------------------------------------------------------- hub sides

Hub = Callable[[Fleet, Sequence[tuple[Verdict, Submission]]], Delta]


def robust_hub(strategy: Strategy) -> Hub:
    """The hub core: screened deltas aggregated by ``strategy`` within the model's bound."""

    def run(fleet: Fleet, accepted: Sequence[tuple[Verdict, Submission]]) -> Delta:
        loaded = {s.key: v.tensors for v, s in accepted}
        result: Aggregation = aggregate(
            [s for _, s in accepted], lambda k: loaded[k], fleet.layout, strategy,  # type: ignore[arg-type, return-value]
            max_norm=CLIP_NORM,
        )  # fmt: skip
        return dict(result.update)

    return run


def plain_fedavg(fleet: Fleet, accepted: Sequence[tuple[Verdict, Submission]]) -> Delta:
    """Flower's FedAvg: the mean weighted by the claimed sample counts, no bound."""
    return dict(
        weighted_mean([(v.tensors, float(s.claimed_samples)) for v, s in accepted])  # type: ignore[misc]
    )


def first_attackers(n_devices: int, share: float = 0.2) -> frozenset[int]:
    """Every fifth device (20%): attackers spread across the label mixes."""
    step = round(1 / share)
    return frozenset(range(0, n_devices, step))


def points(x: float) -> str:
    return f"{100 * x:5.1f}"


__all__ = [
    "ATTACKS",
    "CLIP_NORM",
    "Attack",
    "Delta",
    "Fleet",
    "Hub",
    "Params",
    "TrainSettings",
    "first_attackers",
    "own_sign_flip",
    "plain_fedavg",
    "points",
    "robust_hub",
]
