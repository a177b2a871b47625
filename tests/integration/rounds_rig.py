"""A real hub, a real broker and real agents running federated rounds on non-IID data.

:class:`RoundsRig` starts :class:`hub.service.HubService` over an embedded broker (amqtt, a
real MQTT broker in the process), registers :class:`simulator.task.ShiftedTask`'s model
through the REST API with the hub's validation set and an FL policy, and starts
:class:`simulator.fleet.SimulatedFleet`: complete :class:`agent.device.Device` agents that
enrol, install, serve, retrain their head (agent/learner.py, agent/trainer.py) and send
signed deltas over MQTT, exactly as on their own machines. Each device holds its own
slice of the task (its own Dirichlet class mix and input shift: :mod:`tests.hub.rounds.
fedsim`'s draw), predicts it through its runtime and gets the labels as feedback.

Accuracy is measured on a fleet test set (every device's distribution, equally) with the
head of the version the hub registered, read back from its package; the *central* head
is the agent's trainer on the union of every device's rows.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from agent.errors import NotReady, RetrainingOff
from agent.trainer import train_head
from edgefleet.clock import SystemClock
from hub import keyring
from hub.api import auth
from hub.rounds.evaluation import evaluate_head
from hub.service import HubService
from hub.settings import HubSettings
from hub.transport.broker import EmbeddedBroker
from protocol.headparams import read_head
from protocol.heads import find_head
from protocol.manifest import Head
from protocol.package import decode_package
from simulator.fleet import SimulatedFleet
from simulator.task import ShiftedTask
from tests.hub.rounds.fedsim import _draw

MODEL = "task"
WAIT_S = 120.0
FINAL = frozenset({"accepted", "rejected", "failed", "cancelled"})


def eventually(check: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return found


def npz(**arrays: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.savez(out, **arrays)  # type: ignore[arg-type]
    return out.getvalue()


@dataclass
class Data:
    """Every device's raw rows, the fleet test set and the hub's (smaller) validation set."""

    devices: list[tuple[np.ndarray, np.ndarray]]
    test: tuple[np.ndarray, np.ndarray]
    hub_set: tuple[np.ndarray, np.ndarray]

    @classmethod
    def build(cls, task: ShiftedTask, n_devices: int, *, seed: int, rows: int = 200) -> Data:
        rng = np.random.default_rng(seed)
        params = [(rng.dirichlet([1.0] * task.n_classes), rng.normal(scale=0.25, size=8))]
        params += [
            (rng.dirichlet([1.0] * task.n_classes), rng.normal(scale=0.25, size=8))
            for _ in range(n_devices - 1)
        ]
        devices = [_draw(task, rng, rows, shift, mix) for mix, shift in params]

        def mixture(total: int) -> tuple[np.ndarray, np.ndarray]:
            drawn = [_draw(task, rng, total // n_devices, shift, mix) for mix, shift in params]
            return np.vstack([x for x, _ in drawn]), np.concatenate([y for _, y in drawn])

        return cls(devices, mixture(4000), mixture(1000))


class RoundsRig:
    """The hub, its REST client, the fleet, and the data (module docstring)."""

    def __init__(
        self, hub: HubService, api: httpx.Client, fleet: SimulatedFleet, task: ShiftedTask,
        data: Data,
    ) -> None:  # fmt: skip
        self.hub, self.api, self.fleet, self.task, self.data = hub, api, fleet, task, data
        head = find_head(task.model)
        assert head is not None
        self.head: Head = head
        self.ids = fleet.device_ids

    @classmethod
    @contextmanager
    def start(
        cls,
        root: Path,
        *,
        devices: int,
        policy: dict[str, Any],
        seed: int = 1,
        database: str = "",
    ) -> Iterator[RoundsRig]:
        clock = SystemClock()
        task = ShiftedTask.build(seed=0, n_inputs=8, width=64, n_classes=5)
        data = Data.build(task, devices, seed=seed)
        settings = HubSettings(
            data_dir=root / "hub", http_port=0, reconcile_interval_s=1.0,
            round_tick_interval_s=0.5, database=database,
        )  # fmt: skip
        ring = keyring.init(settings.keys_dir, now_ms=clock.now_ms())
        root_file = root / "root.json"
        root_file.write_bytes(ring.chain[0].to_bytes())
        with HubService.start(settings, embedded_broker=EmbeddedBroker()) as hub:
            admin = auth.create_token(
                hub.store, role="admin", name="rounds", actor="test", now_ms=clock.now_ms()
            )
            with httpx.Client(
                base_url=f"{hub.http_url}/api/v1",
                headers={"Authorization": f"Bearer {admin.token}"},
                timeout=60.0,
            ) as api:
                x_ref = data.hub_set[0]
                ok(api.post(
                    "/models", data={"name": MODEL},
                    files={"model": ("m.onnx", task.model), "reference": ("r.npz", npz(X=x_ref))},
                ))  # fmt: skip
                ok(api.put(f"/models/{MODEL}/fl-policy", json=policy))
                x_hub, y_hub = data.hub_set
                ok(api.put(
                    f"/models/{MODEL}/validation-set",
                    files={"validation": ("v.npz", npz(X=x_hub, y=y_hub))},
                ))  # fmt: skip
                token = ok(
                    api.post("/enrollment-tokens", json={"kind": "fleet", "expires_in_s": 3600})
                )
                with SimulatedFleet.start(
                    root / "devices", count=devices, broker_url=hub.broker_url,
                    root_metadata=root_file, enrollment_token=token["token"], window_s=5.0,
                    retrain_interval_s=0.5, telemetry_interval_s=5.0, prefix="fl",
                ) as fleet:  # fmt: skip
                    rig = cls(hub, api, fleet, task, data)
                    eventually(rig._all_online, "every device enrolled and online")
                    rig.roll_out(1)
                    yield rig

    # ------------------------------------------------------------------ fleet

    def _all_online(self) -> bool:
        rows = ok(self.api.get("/devices", params={"limit": 1000}))["items"]
        online = {d["id"] for d in rows if d["status"] == "active" and d["online"]}
        return online >= set(self.ids)

    def roll_out(self, version: int, ids: list[str] | None = None) -> None:
        """Desired ``version`` for the devices (all by default); wait until they run it."""
        ids = ids or self.ids
        config = {"retrain": True, "retrain_min_samples": 50, "window_s": 5.0}
        for device_id in ids:
            ok(self.api.put(
                f"/devices/{device_id}/desired",
                json={"model": MODEL, "version": version, "config": config},
            ))  # fmt: skip

        def running() -> bool:
            rows = ok(self.api.get("/devices", params={"limit": 1000}))["items"]
            on = {d["id"] for d in rows if (d["active"] or {}).get("version") == version}
            return on >= set(ids)

        eventually(running, f"every device runs v{version}")

    def heard(self, round_id: str | None, ids: list[str] | None = None) -> None:
        """Wait until the devices' desired config names ``round_id``."""
        devices = [self.fleet.devices[i] for i in ids or self.ids]
        eventually(
            lambda: all(d.learning.hub_config.round_id == round_id for d in devices),
            f"devices told of round {round_id}",
        )

    def feed(self, ids: list[str] | None = None) -> None:
        """Each device predicts its own rows and gets their labels as feedback."""
        for device_id in ids or self.ids:
            x, y = self.data.devices[self.ids.index(device_id)]
            device = self.fleet.devices[device_id]

            def labelled(device: Any = device, x: np.ndarray = x, y: np.ndarray = y) -> bool:
                # a learner attaches to a new install on its own job: until then the
                # predictions are not remembered and their labels come back unknown
                try:
                    prediction = device.predict(x.astype(np.float32))
                    answer = device.feedback(dict(zip(prediction.ids, y.tolist(), strict=True)))
                except (NotReady, RetrainingOff):  # installing, or the learner not built yet
                    return False
                return not answer.get("unknown")

            eventually(labelled, f"{device_id} to take its labels")

    # ------------------------------------------------------------------ rounds

    def open(self, **body: Any) -> str:
        record = ok(self.api.post("/rounds", json={"model": MODEL, **body}))
        return str(record["round_id"])

    def finished(self, round_id: str, timeout_s: float = WAIT_S) -> dict[str, Any]:
        def final() -> dict[str, Any] | None:
            detail = ok(self.api.get(f"/rounds/{round_id}"))
            return detail if detail["state"] in FINAL else None

        result: dict[str, Any] = eventually(final, f"round {round_id} to end", timeout_s)
        return result

    def released(self, version: int) -> dict[str, Any]:
        """Wait until ``version`` of the model is registered; it must be released."""
        info = self.registered(version)
        assert info["status"] == "released", info["lineage"].get("validation")
        return info

    def registered(self, version: int) -> dict[str, Any]:
        """Wait until ``version`` of the model is registered."""

        def registered() -> dict[str, Any] | None:
            response = self.api.get(f"/models/{MODEL}/versions/{version}")
            return ok(response) if response.status_code == 200 else None

        try:
            info: dict[str, Any] = eventually(registered, f"v{version} registered")
        except AssertionError as e:
            statuses = {i: self.fleet.devices[i].status().get("retrain") for i in self.ids}
            raise AssertionError(f"{e}; verdicts {self.verdicts_of(None)}; {statuses}") from e
        return info

    def verdicts_of(self, device_id: str | None) -> list[tuple[str, str | None]]:
        """The buffer's verdicts on ``device_id``'s deltas (None: everyone's)."""
        return [
            (v.status, v.reason)
            for v in self.hub.store.rounds.verdicts(f"buffer:{MODEL}")
            if device_id in (None, v.device_id)
        ]

    # ------------------------------------------------------------------ accuracy

    def head_of(self, version: int) -> tuple[np.ndarray, np.ndarray]:
        package = decode_package(self.hub.registry.download(MODEL, version))
        w, b = read_head(package.model, self.head)
        return w.astype(np.float64), b.astype(np.float64)

    def features(self, x: np.ndarray) -> np.ndarray:
        import onnx
        from onnx import numpy_helper

        inits = {
            t.name: numpy_helper.to_array(t)
            for t in onnx.load_from_string(self.task.model).graph.initializer
        }
        out: np.ndarray = np.maximum(x @ inits["w1"] + inits["b1"], 0.0)
        return out

    def accuracy(self, params: tuple[np.ndarray, np.ndarray]) -> float:
        x, y = self.data.test
        return evaluate_head(self.head, *params, self.features(x), y).value

    def central(self) -> tuple[np.ndarray, np.ndarray]:
        """The agent's trainer on the union of every device's rows (the best of three
        step sizes on the test set: the bound a federation aims for)."""
        x = self.features(np.vstack([x for x, _ in self.data.devices]))
        y = np.concatenate([y for _, y in self.data.devices])
        base = self.head_of(1)
        heads = []
        for lr in (0.5, 0.1, 0.05):
            r = train_head(
                self.head, *base, x, y, rng=np.random.default_rng(0), epochs=30, lr=lr,
                batch_size=32, holdout_fraction=0.05,
            )  # fmt: skip
            heads.append((r.weight.astype(np.float64), r.bias.astype(np.float64)))
        return max(heads, key=self.accuracy)


def ok(response: httpx.Response) -> Any:
    assert response.status_code < 300, (
        f"{response.request.url}: {response.status_code} {response.text}"
    )
    return response.json()
