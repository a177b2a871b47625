"""One device, assembled: trust, the daemon, the model lifecycle and the learning loop.

``edgefleet agent run`` builds one :class:`Device` and runs it until a signal; the
simulator and the demo build several in one process (each with its own ``device_id`` and
``state_dir``) and start and stop them without touching signal handlers::

    device = Device(load_config("agent.toml"))
    device.start()
    answer = device.predict([[0.1, 0.2, 0.3, 0.4]])     # Prediction(ids, outputs)
    device.feedback({answer.ids[0]: 2})                 # the label, once it is known
    device.stop()

The wiring, each piece owning its concern::

    lock_state_dir(config)                      first: one process per state directory;
                                                a second agent exits before it reads or
                                                repairs anything (StateDirInUse)
    TrustStore.open(state_dir, root_metadata)   trusted state; its rollout keys guard
                                                every downlink frame
    Agent(config, rollout_keys=..., lock=...,   outbox, downlink guard, jobs, local HTTP
          transport=..., scheduler=...)         API; the transport and the scheduler are
                                                the daemon's own unless given (shared by
                                                many devices in the simulator)
    ModelManager(...).attach(agent)             desired state, chunks, fleet documents,
                                                the "models" job
    LearningLoop(...).attach(agent, ...)        learner and sketch window per active
                                                model; the "learning", "retrain" and
                                                "sketch-window" jobs, the stop hook that
                                                flushes the last window, the hub's
                                                job intervals
    agent.set_state_source(...)                 state reports carry the retrain status
    agent.set_inference(device)                 /predict, /feedback, /status

The manager's own messages pass through :meth:`LearningLoop.annotate` on their way to
the outbox, so every state report, whoever sends it, says how retraining stands. The
manager reports its state while it is being attached, before :meth:`Device.start`; the
daemon queues its ``hello`` ahead of that first message, so the hub learns the device's
key first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from agent.config import AgentConfig
from agent.daemon import Agent, lock_state_dir
from agent.http_api import Prediction
from agent.learner import LearnerSettings
from agent.learning import LearningLoop
from agent.scheduler import Scheduler
from agent.shared_loop import SharedLoop
from agent.transport import Transport
from agent.trust_store import TrustStore
from agent.updater import ModelManager, UpdaterConfig
from edgefleet.clock import Clock
from protocol.frame import Message
from protocol.messages import InstallOutcome, ModelRef

LEARNING_DIR = "learning"


class Device:
    """The whole device agent for one :class:`AgentConfig`; see the module docstring.

    ``clock``, ``updater`` and ``learner`` default to the wall clock and the components'
    own defaults; ``transport`` and ``scheduler`` to the daemon's own (agent/daemon.py),
    the transport a session on ``loop`` when one is given (many devices, one thread).
    Tests and the simulator pass their own.

    Raises (constructor):
        StateDirInUse: another agent runs on ``state_dir``; nothing there was touched.
        ConfigError: no trusted state yet and no readable, verifying ``root_metadata``,
            or TLS files that cannot be loaded.
        StateCorrupt: the trusted state or the model slots cannot be read.
        IdentityError: an unreadable device key.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Clock | None = None,
        updater: UpdaterConfig | None = None,
        learner: LearnerSettings | None = None,
        transport: Transport | None = None,
        scheduler: Scheduler | None = None,
        loop: SharedLoop | None = None,
    ) -> None:
        self._lock = lock_state_dir(config)
        try:
            self._build(
                config, clock, updater or UpdaterConfig(), learner, transport, scheduler, loop
            )
        except BaseException:
            self._lock.release()
            raise

    def _build(
        self,
        config: AgentConfig,
        clock: Clock | None,
        updater: UpdaterConfig,
        learner: LearnerSettings | None,
        transport: Transport | None,
        scheduler: Scheduler | None,
        loop: SharedLoop | None,
    ) -> None:
        self.config = config
        self.trust = TrustStore.open(config.state_dir, config.root_metadata)
        self.agent = Agent(
            config,
            clock=clock,
            rollout_keys=self.trust.rollout_keys,
            trusted_now=self.trust.now_ms,
            transport=transport,
            scheduler=scheduler,
            lock=self._lock,
            loop=loop,
        )
        self.trust.watch_downlink(self.agent.downlink.problem)
        self.manager = ModelManager(
            config.state_dir,
            self.trust,
            device_id=config.device_id,
            clock=self.agent.clock,
            send=self._send_for_manager,
            config=updater,
        )
        self.learning = LearningLoop(
            self.manager,
            config.state_dir / LEARNING_DIR,
            clock=self.agent.clock,
            send=self.agent.send,
            settings=learner,
        )
        self.manager.attach(self.agent)
        self.learning.attach(
            self.agent,
            follow_s=updater.tick_s,
            retrain_interval_s=config.retrain_interval_s,
            window_s=config.window_s,
        )
        self.agent.set_state_source(self.learning.state_report)
        self.agent.set_inference(self)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect, serve the local API (if ``http_port``) and start the jobs; no signals.

        Raises:
            AgentError: the local API cannot listen on its port.
        """
        self.agent.start()

    def stop(self) -> None:
        """Stop the daemon (queueing the last data window, reporting ``offline``, flushing
        what the hub acks), close the learner's files, let go of the state directory."""
        try:
            self.agent.stop()
            self.learning.close()
        finally:
            self._lock.release()

    def run(self) -> None:
        """Start, block until SIGTERM or SIGINT, then stop. Main thread only."""
        try:
            self.agent.run()
        finally:
            self.learning.close()
            self._lock.release()

    # ------------------------------------------------------------------ InferenceService

    def predict(self, inputs: Any) -> Prediction:
        """Run the active model on one batch; an id per output row (module docstring).

        Raises:
            NotReady: no model is active yet (503).
            InvalidInput: inputs of the wrong shape or dtype (422).
            InferenceFailed: the model failed or gave NaN/Inf.
        """
        return self.learning.predict(inputs)

    def feedback(self, labels: Mapping[str, Any]) -> Mapping[str, Any]:
        """Label earlier predictions by id: ``{"accepted": [...], "unknown": [...]}``.

        Raises:
            NotReady (503), RetrainingOff (409), InvalidLabel (422).
        """
        return self.learning.feedback(labels)

    def status(self) -> Mapping[str, Any]:
        """The ``runtime`` part of the local ``/status``: what serves, the last install,
        the trust flags, the shadow run, and how retraining stands."""
        learning = self.learning.info()  # follows the active model first
        report = self.manager.state_report()
        shadow = self.manager.shadow
        entry = shadow.entry
        return {
            "active": _json(report.active),
            "previous": _json(report.previous),
            "install": _json(report.install),
            "flags": list(report.flags),
            "shadow": {
                "model": None if entry is None else f"{entry.name} v{entry.version}",
                "status": shadow.status,
                "share": shadow.share,
                "dropped": shadow.dropped,
            },
            **learning,
        }

    # ------------------------------------------------------------------ internals

    def _send_for_manager(self, message: Message) -> int:
        return self.agent.send(self.learning.annotate(message))


def _json(value: ModelRef | InstallOutcome | None) -> dict[str, Any] | None:
    return None if value is None else dataclasses.asdict(value)


__all__ = ["LEARNING_DIR", "Device"]
