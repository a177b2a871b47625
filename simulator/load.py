"""The demo's sensor traffic: every device predicts a batch each tick, labels come late.

One thread drives every simulated device through :meth:`agent.device.Device.predict`, the
same call the local HTTP API's ``POST /predict`` makes (HTTP per row would spend the demo's
CPU on JSON, not on the loop). Each tick, every device classifies ``rows`` readings of its
cohort (:class:`simulator.streams.SensorTask`); a ``label_share`` of them get their true
class later, as a labelling pipeline would deliver it: the thread keeps those labels until
:meth:`Load.deliver_labels` hands them to the devices (``Device.feedback``), which is what
local retraining trains on. Served predictions on labelled rows are scored per *phase*
(the story names them), so the report's accuracy is the fleet's accuracy on labelled
feedback of what the devices actually served.
"""

from __future__ import annotations

import contextlib
import threading
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from agent.device import Device
from agent.errors import AgentError
from simulator.streams import SensorTask


@dataclass
class Score:
    labelled: int = 0
    correct: int = 0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


@dataclass(eq=False)
class Load:
    """Traffic for ``devices``; ``drifted``: the ids whose quiet sensors move once
    :meth:`start_drift` is called; ``poisoned``: the ids whose labels are flipped."""

    task: SensorTask
    devices: dict[str, Device]
    drifted: frozenset[str]
    poisoned: frozenset[str] = frozenset()
    concept: bool = False
    """The drift moves the drifted devices' labels (each class becomes the next), not
    their readings."""
    live_labels: bool = False
    """Hand labels to the devices every tick rather than when :meth:`deliver_labels` is
    called."""
    rows: int = 40
    tick_s: float = 1.0
    label_share: float = 0.5
    seed: int = 11
    phase: str = "before_drift"
    scores: dict[str, Score] = field(default_factory=lambda: defaultdict(Score))
    errors: int = 0
    _drift: bool = False
    _pending: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="demo-load", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def start_drift(self) -> None:
        self._drift = True

    def set_phase(self, phase: str) -> None:
        with self._lock:
            self.phase = phase

    def accuracy(self, phase: str) -> float | None:
        with self._lock:
            return self.scores[phase].accuracy

    def deliver_labels(self) -> int:
        """Hand every held label to its device; how many it took (labels of predictions a
        device no longer remembers, e.g. across a model swap, come back unknown). A
        ``poisoned`` device gets each label as the next class."""
        with self._lock:
            pending, self._pending = self._pending, defaultdict(dict)
        taken = 0
        for device_id, labels in pending.items():
            if device_id in self.poisoned:
                labels = {i: (y + 1) % self.task.n_classes for i, y in labels.items()}
            device = self.devices.get(device_id)
            if device is None:  # stopped (a fault): its predictions are gone with it
                continue
            with contextlib.suppress(AgentError):  # installing, or the learner not built yet
                answer = device.feedback(labels)
                taken += len(answer.get("accepted", ()))
        return taken

    def _run(self) -> None:
        rng = np.random.default_rng(self.seed)
        while not self._stop.wait(self.tick_s):
            for device_id, device in list(self.devices.items()):
                drifted = self._drift and device_id in self.drifted
                x, y = self.task.sample(self.rows, rng, drifted=drifted and not self.concept)
                if drifted and self.concept:
                    y = (y + 1) % self.task.n_classes
                try:
                    served = device.predict(x)
                except Exception as e:  # counted, as the agent counts its failures
                    if not isinstance(e, AgentError) and self.devices.get(device_id) is device:
                        raise  # a real failure, not a device a fault is stopping
                    self.errors += 1
                    continue
                predicted = np.argmax(np.asarray(served.outputs), axis=1)
                keep = rng.random(self.rows) < self.label_share
                with self._lock:
                    score = self.scores[self.phase]
                    score.labelled += int(keep.sum())
                    score.correct += int((predicted[keep] == y[keep]).sum())
                    for i in np.flatnonzero(keep).tolist():
                        self._pending[device_id][served.ids[i]] = int(y[i])
            if self.live_labels:
                self.deliver_labels()
