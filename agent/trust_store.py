"""The agent's shell around :mod:`protocol.trust`: load, feed, persist the trusted state.

python-tuf's ``Updater`` shape: the pure core decides, this module reads and writes. The
:class:`~protocol.trust.TrustedState` lives in ``<state_dir>/trusted.json``, created from
the pinned root document (``root_metadata`` in agent.toml) on first start, and rewritten
atomically (temp, fsync, rename, directory fsync) after **every** accepted step, so no
high-water mark goes backwards across restarts or power cuts (threat-model T2, B33).

Fleet documents arrive retained on ``fleet/<kind>`` (and again on every reconnect):

- ``root``: the root chain, a canonical JSON list of DSSE envelopes, oldest first
  (:func:`protocol.metadata.decode_root_chain`); walked forward as TUF does, each step signed by a
  threshold of the old and the new root keys. A rotation of the rollout or heartbeat
  keys resets exactly those roles' high-water marks (fast-forward recovery, T7).
- ``release``: the release list (:func:`protocol.trust.update_release_list`).
- ``heartbeat``: the hub's short-lived "this is current" (T3); it raises the time floor.

A document the core refuses changes nothing. ``EqualVersionConflict`` (the trusted
version with other content) is logged and ignored, as TUF does; a ``VersionGap`` in the
root chain is logged and waits for the next publication of the chain (the hub publishes
it retained, so every reconnect retries it). Every refusal is counted by reason.

Flags for the state report: ``freeze_suspected`` (no unexpired heartbeat at ``now_ms``
although it trusts a release list or a heartbeat: keep serving, install nothing),
``clock_suspect``: the device clock is far ahead of hub time, detected when a newly
received, authentic heartbeat is already expired by more than its own lifetime (a device
clock set back is caught by the time floor instead: :func:`protocol.trust.effective_now`),
and ``downlink_refused``: the downlink guard refuses the hub's frames by its replay window
(:meth:`TrustStore.watch_downlink`; the device cannot hear the hub, and says so rather
than failing installs as slow downloads).

Thread-safe: one lock around the state, since the downlink worker, the scheduler and
the downlink guard (:meth:`TrustStore.rollout_keys`) read it from different threads.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.errors import ConfigError, StateCorrupt
from edgefleet.files import TEMP_SUFFIX, write_atomic
from protocol import metadata, trust
from protocol.documents import SignedDocument, verify_threshold
from protocol.errors import EqualVersionConflict, Expired, ProtocolError
from protocol.messages import TrustVersions
from protocol.metadata import Heartbeat, Root
from protocol.trust import AssignmentVerdict, TrustedState

logger = logging.getLogger(__name__)

STATE_FILE = "trusted.json"


class TrustStore:
    """The persisted trusted state and the fleet document handlers.

    Raises (constructor):
        StateCorrupt: ``trusted.json`` exists but cannot be read.
        ConfigError: no state yet and no pinned root, or a pinned root that does not verify.
    """

    def __init__(self, state_dir: Path, pinned_root: bytes | None) -> None:
        self._path = state_dir / STATE_FILE
        self._lock = threading.RLock()
        self.refused: Counter[str] = Counter()
        self.clock_suspect = False
        state_dir.mkdir(parents=True, exist_ok=True)
        for torn in self._path.parent.glob(f".{STATE_FILE}.*{TEMP_SUFFIX}"):  # a torn write
            torn.unlink(missing_ok=True)
        self._state = self._load(pinned_root)
        self._rollout: tuple[Root | None, tuple[Ed25519PublicKey, ...]] = (None, ())
        self._downlink: Callable[[], str | None] = lambda: None

    @classmethod
    def open(cls, state_dir: Path, root_metadata: Path | None) -> TrustStore:
        """From the agent's config: ``state_dir`` and the pinned root file (first start only).

        Raises:
            StateCorrupt, ConfigError: see the class; ConfigError also when the root file
                cannot be read.
        """
        pinned = None
        if root_metadata is not None and not (state_dir / STATE_FILE).exists():
            try:
                pinned = root_metadata.read_bytes()
            except OSError as e:
                raise ConfigError(f"root_metadata {root_metadata}: {e.strerror}") from e
        return cls(state_dir, pinned)

    @property
    def state(self) -> TrustedState:
        return self._state

    def rollout_keys(self) -> tuple[Ed25519PublicKey, ...]:
        """The rollout role's keys, which sign every downlink frame (the daemon's guard).

        Parsed once per trusted root: the guard asks for every frame (each chunk).
        """
        root, cached = self._rollout
        if root is not self._state.root:
            root = self._state.root
            cached = tuple(root.role_keys("rollout").values())
            self._rollout = root, cached
        return cached

    def now_ms(self, system_now_ms: int) -> int:
        """A cycle's ``now_ms``: the system clock lifted to the time floor (T15)."""
        return trust.effective_now(self._state, system_now_ms)

    def freeze_suspected(self, now_ms: int) -> bool:
        return trust.freeze_suspected(self._state, now_ms)

    def versions(self) -> TrustVersions:
        return self._state.versions()

    def flags(self, now_ms: int) -> tuple[str, ...]:
        """The trust flags for a state report at ``now_ms``.

        A device that trusts neither a release list nor a heartbeat is not flagged
        ``freeze_suspected``: the fleet has released nothing yet, and there is nothing to
        keep current (a new fleet's devices all showed the flag until the first release).
        Installs still wait for a fresh heartbeat, and a device kept from its first
        release list while the hub assigns it one is found ``stuck`` by the hub."""
        state = self._state
        heard = state.release is not None or state.heartbeat is not None
        flags = ("freeze_suspected",) if heard and self.freeze_suspected(now_ms) else ()
        flags = (*flags, "clock_suspect") if self.clock_suspect else flags
        return (*flags, "downlink_refused") if self.downlink_problem() else flags

    def watch_downlink(self, problem: Callable[[], str | None]) -> None:
        """Take ``problem`` (:meth:`agent.downlink.Downlink.problem`) into the flags."""
        self._downlink = problem

    def downlink_problem(self) -> str | None:
        """Why the device cannot hear the hub (its downlink guard refuses the hub's
        frames by seq), or None."""
        return self._downlink()

    # ------------------------------------------------------------------ fleet documents

    def on_root(self, payload: bytes) -> bool:
        """Walk the root chain forward; True when the trusted root changed. Never raises."""
        return self._fleet(
            "root", lambda s: trust.update_root(s, metadata.decode_root_chain(payload))
        )

    def on_release(self, payload: bytes, now_ms: int) -> bool:
        """Trust a newer release list; True when it changed. Never raises."""
        return self._fleet(
            "release",
            lambda s: trust.update_release_list(s, SignedDocument.from_bytes(payload), now_ms),
        )

    def on_heartbeat(self, payload: bytes, now_ms: int) -> bool:
        """Trust a newer heartbeat (raising the time floor); True when it changed. Never raises."""
        try:
            doc = SignedDocument.from_bytes(payload)
        except ProtocolError as e:
            return self._refused("heartbeat", e)
        with self._lock:
            try:
                new = trust.update_heartbeat(self._state, doc, now_ms)
            except Expired as e:
                self.clock_suspect = self._far_ahead(doc, trust.effective_now(self._state, now_ms))
                return self._refused("heartbeat", e)
            except ProtocolError as e:
                return self._refused("heartbeat", e)
            self.clock_suspect = False
            return self._commit(new)

    # ------------------------------------------------------------------ assignments

    def update_release_list(self, doc: SignedDocument, now_ms: int) -> bool:
        """Trust the release list a desired state carries; True when it changed.

        Raises:
            ProtocolError: whatever :func:`protocol.trust.update_release_list` raises,
                except ``EqualVersionConflict`` (logged, the trusted list stays).
        """
        with self._lock:
            try:
                new = trust.update_release_list(self._state, doc, now_ms)
            except EqualVersionConflict as e:
                logger.info("release list ignored: %s", e)
                return False
            return self._commit(new)

    def verify_assignment(
        self, doc: SignedDocument, now_ms: int, device_id: str
    ) -> AssignmentVerdict:
        """Verify an assignment without persisting anything; :meth:`accept` persists it.

        Raises:
            ProtocolError: whatever :func:`protocol.trust.verify_assignment` raises.
        """
        return trust.verify_assignment(self._state, doc, now_ms, device_id=device_id)

    def accept(self, verdict: AssignmentVerdict) -> None:
        """Persist an accepted assignment's high-water mark.

        A verdict computed from a state that has since moved in any other way is dropped:
        the assignment is verified again in the next cycle.
        """
        with self._lock:
            current = self._state
            base = replace(
                verdict.state,
                assignment_version=current.assignment_version,
                assignment_sha256=current.assignment_sha256,
            )
            if base == current:
                self._commit(verdict.state)

    def verify_shadow(self, doc: SignedDocument, now_ms: int, device_id: str) -> AssignmentVerdict:
        """Verify a shadow assignment (its own high-water mark) without persisting anything;
        :meth:`accept_shadow` persists it.

        Raises:
            ProtocolError: whatever :func:`protocol.trust.verify_shadow` raises.
        """
        return trust.verify_shadow(self._state, doc, now_ms, device_id=device_id)

    def accept_shadow(self, verdict: AssignmentVerdict) -> None:
        """Persist an accepted shadow assignment's high-water mark (as :meth:`accept`)."""
        with self._lock:
            current = self._state
            base = replace(
                verdict.state,
                shadow_version=current.shadow_version,
                shadow_sha256=current.shadow_sha256,
            )
            if base == current:
                self._commit(verdict.state)

    # ------------------------------------------------------------------ internals

    def _fleet(self, kind: str, update: Callable[[TrustedState], TrustedState]) -> bool:
        with self._lock:
            try:
                new = update(self._state)
            except ProtocolError as e:
                return self._refused(kind, e)
            return self._commit(new)

    def _commit(self, new: TrustedState) -> bool:
        if new == self._state:
            return False
        write_atomic(self._path, new.to_bytes())
        old, self._state = self._state.versions(), new
        logger.info("trusted state %s -> %s", old, new.versions())
        return True

    def _refused(self, kind: str, error: ProtocolError) -> bool:
        self.refused[f"{kind}.{error.reason}"] += 1
        if isinstance(error, EqualVersionConflict):
            logger.info("fleet %s ignored: %s", kind, error)
        else:
            logger.warning("fleet %s refused (%s): %s", kind, error.reason, error)
        return False

    def _far_ahead(self, doc: SignedDocument, now_ms: int) -> bool:
        """True when ``doc`` is an authentic, new heartbeat expired by more than its lifetime."""
        root, trusted = self._state.root, self._state.heartbeat
        try:
            verify_threshold(
                doc, "heartbeat", root.role_keys("heartbeat"), root.threshold("heartbeat")
            )
            beat = metadata.parse(Heartbeat, doc)
        except ProtocolError:
            return False
        newer = trusted is None or beat.version > trusted.version
        return newer and now_ms - beat.expires > beat.expires - beat.issued_at

    def _load(self, pinned_root: bytes | None) -> TrustedState:
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            data = None
        if data is not None:
            try:
                return TrustedState.from_bytes(data)
            except ProtocolError as e:
                raise StateCorrupt(f"{self._path} is not a valid trusted state: {e}") from e
        if pinned_root is None:
            raise ConfigError("root_metadata (the pinned root document) is required on first start")
        try:
            state = TrustedState.initial(SignedDocument.from_bytes(pinned_root))
        except ProtocolError as e:
            raise ConfigError(f"the pinned root does not verify: {e}") from e
        write_atomic(self._path, state.to_bytes())
        logger.info("trust initialised from pinned root v%d", state.root.version)
        return state
