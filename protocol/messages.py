"""Every frame message, one frozen class per topic kind, validated on construction.

Device → hub (``up``): :class:`Hello`, :class:`StateReport`, :class:`Telemetry`,
:class:`DeltaUpload`, :class:`DataDelta`, :class:`DeviceAck`, :class:`FetchRequest`.
Hub → device (``down``): :class:`DesiredState`, :class:`HubAck`, :class:`Chunk`,
:class:`Nudge`. ``FetchRequest``/``Chunk`` are a request/reply pair, as are an uplink
frame and the ``HubAck`` that commits it.

Round-trip law for every class ``C`` here:
``frame.decode(frame.encode(m, ...), key).message == m``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from protocol.broker_auth import check_verifier
from protocol.documents import SignedDocument
from protocol.errors import Malformed
from protocol.frame import Message, body_field, register
from protocol.schema import check_name, check_range, check_sha256
from protocol.sketches import ConfidenceSketch, FeatureSketch, PredictionSketch

MAX_TAGS = 32
MAX_REASON = 512
MAX_CHUNK_BYTES = 128 * 1024


def _check_reason(text: str) -> None:
    if len(text) > MAX_REASON:
        raise Malformed(f"reason longer than {MAX_REASON}")


@dataclass(frozen=True)
class ModelRef:
    """A model version as both sides name it: name, version number, package sha256."""

    name: str
    version: int
    sha256: str

    def __post_init__(self) -> None:
        check_name(self.name, "model name")
        check_range(self.version, "model version", 1)
        check_sha256(self.sha256, "model sha256")


# ---------------------------------------------------------------- device -> hub


@register("up", "hello")
@dataclass(frozen=True)
class Hello(Message):
    """First words of a device: its public key (proof of possession: the frame is signed
    with it), what it runs, the enrollment token that lets the hub pin the key, and the
    verifier of the device's own broker password (:mod:`protocol.broker_auth`), which the
    hub provisions on the broker once it trusts the key (docs/broker-security.md)."""

    public_key: str
    agent_version: str
    tags: dict[str, str] = field(default_factory=dict)
    enrollment_token: str | None = None
    active: ModelRef | None = None
    broker_verifier: str | None = None

    def __post_init__(self) -> None:
        if len(self.public_key) != 64:
            raise Malformed("public_key must be 64 hex digits")
        if len(self.tags) > MAX_TAGS:
            raise Malformed(f"more than {MAX_TAGS} tags")
        for key, value in self.tags.items():
            check_name(key, "tag key")
            if len(value) > 128:
                raise Malformed("tag value longer than 128")
        if len(self.agent_version) > 64:
            raise Malformed("agent_version longer than 64")
        if self.enrollment_token is not None and len(self.enrollment_token) > 256:
            raise Malformed("enrollment_token longer than 256")
        if self.broker_verifier is not None:
            check_verifier(self.broker_verifier)


UpdateKind = Literal["delta", "stats"]
InstallStatus = Literal["downloading", "installed", "refused", "failed", "rolled_back", "unchanged"]


@dataclass(frozen=True)
class InstallOutcome:
    """What became of one assignment, with the reason when it did not install."""

    assignment_version: int
    model: ModelRef
    status: InstallStatus
    reason: str = ""

    def __post_init__(self) -> None:
        check_range(self.assignment_version, "assignment_version", 0)
        _check_reason(self.reason)


@dataclass(frozen=True)
class TrustVersions:
    """High-water marks of the device's trusted metadata (0 = none yet)."""

    root: int = 0
    release: int = 0
    assignment: int = 0
    heartbeat: int = 0


@register("up", "state")
@dataclass(frozen=True)
class StateReport(Message):
    """The device twin's reported half: what runs, what was last tried and why it ended."""

    active: ModelRef | None
    previous: ModelRef | None = None
    install: InstallOutcome | None = None
    trust: TrustVersions = field(default_factory=TrustVersions)
    flags: tuple[str, ...] = ()
    retrain: str = "off"
    shadow: InstallOutcome | None = None
    """Why the shadow the hub asked for does not run (``refused``: its assignment or
    package; ``failed``: its download, retried), None while it runs or none is asked for
    (docs/rollouts.md, "Shadow runs")."""

    def __post_init__(self) -> None:
        if len(self.flags) > 16:
            raise Malformed("more than 16 flags")
        for flag in self.flags:
            check_name(flag, "flag")
        _check_reason(self.retrain)


@register("up", "telemetry")
@dataclass(frozen=True)
class Telemetry(Message):
    """Heartbeat-rate health: counters since start, latency percentiles, outbox pressure.

    ``inference_count`` counts predicted rows, not requests; ``error_count`` the rows of
    requests that failed or were refused as invalid input (earlier agents counted
    requests, and no invalid ones).
    """

    uptime_s: float
    inference_count: int = 0
    error_count: int = 0
    latency_p50_ms: float = 0.0
    latency_p95_ms: float = 0.0
    outbox_depth: int = 0
    outbox_dropped: int = 0
    model: ModelRef | None = None

    def __post_init__(self) -> None:
        for name in ("uptime_s", "latency_p50_ms", "latency_p95_ms"):
            check_range(getattr(self, name), name, 0.0)
        for name in ("inference_count", "error_count", "outbox_depth", "outbox_dropped"):
            check_range(getattr(self, name), name, 0)


Metric = Literal["accuracy", "mse"]


@register("up", "delta")
@dataclass(frozen=True)
class DeltaUpload(Message):
    """A locally trained head, as a clipped difference against the version it started from.

    ``tensors`` is a :mod:`protocol.tensors` container; the hub decodes it only after the
    frame, the device and the base version check out (threat-model rule 3).
    """

    base: ModelRef
    num_samples: int
    metric: Metric
    before: float
    after: float
    clip_norm: float
    tensors: bytes = body_field()
    round_id: str | None = None

    def __post_init__(self) -> None:
        check_range(self.num_samples, "num_samples", 1)
        check_range(self.clip_norm, "clip_norm", 0.0)
        if self.round_id is not None:
            check_name(self.round_id, "round_id")


MAX_CLASSES = 4096


@dataclass(frozen=True)
class ShadowReport:
    """How a shadow model (run beside the served one, never served) behaved over a data
    window, on the sampled inputs both models saw.

    Keyed by the *served* model's class ``c``: ``inputs[c]`` sampled rows the served model
    put in ``c``, ``agreed[c]`` of those the shadow put in ``c`` too (a row the shadow
    failed on never agrees). ``outputs[c]``: rows the shadow itself put in ``c`` (its
    output distribution); ``errors``: rows it failed on (an error, a NaN score);
    ``latency_p95_ms``: the shadow's own p95 per request.
    """

    model: ModelRef
    inputs: tuple[int, ...]
    agreed: tuple[int, ...]
    outputs: tuple[int, ...] = ()
    errors: int = 0
    latency_p95_ms: float = 0.0

    def __post_init__(self) -> None:
        if len(self.inputs) > MAX_CLASSES or len(self.outputs) > MAX_CLASSES:
            raise Malformed(f"more than {MAX_CLASSES} classes")
        if len(self.agreed) != len(self.inputs):
            raise Malformed("inputs and agreed differ in length")
        for n, a in zip(self.inputs, self.agreed, strict=True):
            check_range(a, "agreed", 0, n)
        for count in self.outputs:
            check_range(count, "outputs", 0)
        check_range(self.errors, "errors", 0, sum(self.inputs))
        check_range(self.latency_p95_ms, "latency_p95_ms", 0.0)


@register("up", "data")
@dataclass(frozen=True)
class DataDelta(Message):
    """One sketch window: per-feature histograms and moments, predictions, inference stats
    (``inference_count`` and ``error_count`` in rows, as in :class:`Telemetry`)."""

    window_start: int
    window_end: int
    features: tuple[FeatureSketch, ...]
    predictions: PredictionSketch | None = None
    model: ModelRef | None = None
    inference_count: int = 0
    error_count: int = 0
    latency_p50_ms: float = 0.0
    latency_p95_ms: float = 0.0
    confidence: ConfidenceSketch | None = None
    """Label-free performance (classification models with a drift profile; docs/drift.md)."""
    shadow: ShadowReport | None = None
    """The shadow model's run over this window, when the hub asked for one (docs/rollouts.md)."""

    def __post_init__(self) -> None:
        check_range(self.window_start, "window_start", 0)
        check_range(self.window_end, "window_end", self.window_start)
        if len(self.features) > 4096:
            raise Malformed("more than 4096 features")
        check_range(self.inference_count, "inference_count", 0)
        check_range(self.error_count, "error_count", 0)


@register("up", "ack")
@dataclass(frozen=True)
class DeviceAck(Message):
    """The device's verdict on one downlink frame (a desired state, most often)."""

    ref_seq: int
    ref_kind: str
    status: Literal["accepted", "refused", "duplicate"]
    reason: str = ""

    def __post_init__(self) -> None:
        check_range(self.ref_seq, "ref_seq", 1)
        check_name(self.ref_kind, "ref_kind")
        _check_reason(self.reason)


@register("up", "fetch")
@dataclass(frozen=True)
class FetchRequest(Message):
    """Ask for ``length`` bytes of artifact ``sha256`` from ``offset`` (resumable download)."""

    sha256: str
    offset: int
    length: int

    def __post_init__(self) -> None:
        check_sha256(self.sha256, "sha256")
        check_range(self.offset, "offset", 0)
        check_range(self.length, "length", 1, MAX_CHUNK_BYTES)


# ---------------------------------------------------------------- hub -> device


@dataclass(frozen=True)
class DeviceConfig:
    """Settings the hub pushes with the desired state (units in the names)."""

    telemetry_interval_s: float = 30.0
    window_s: float = 60.0
    retrain: bool = True
    retrain_min_samples: int = 64
    delta_clip_norm: float = 10.0
    round_id: str | None = None
    update_kind: UpdateKind = "delta"
    """What the device's upload to the round carries: a trained ``delta``, or the head
    rows' sufficient ``stats`` (exact mode, :mod:`protocol.linearstats`)."""
    shadow_sample: float = 0.2
    """The share of predict requests a shadow model (``DesiredState.shadow``) also runs on."""

    def __post_init__(self) -> None:
        check_range(self.shadow_sample, "shadow_sample", 0.0, 1.0)
        check_range(self.telemetry_interval_s, "telemetry_interval_s", 0.1, 86400)
        check_range(self.window_s, "window_s", 0.1, 86400)
        check_range(self.retrain_min_samples, "retrain_min_samples", 1)
        check_range(self.delta_clip_norm, "delta_clip_norm", 0.0)
        if self.round_id is not None:
            check_name(self.round_id, "round_id")


@register("down", "desired")
@dataclass(frozen=True)
class DesiredState(Message):
    """The device twin's desired half, retained on the device's ``down/desired``.

    ``assignment`` (signed by the rollout role) names the release to run; the
    ``release_list`` (signed by the release role) travels with it so the device can check
    the pair in one step. Both are None when the hub wants no particular model.

    ``shadow`` (an assignment too, signed by the rollout role, checked against its own
    high-water mark) names a version to run *beside* the served one on a share of the
    inputs (``config.shadow_sample``) without serving it; None: run no shadow.
    """

    config: DeviceConfig
    assignment: SignedDocument | None = None
    release_list: SignedDocument | None = None
    shadow: SignedDocument | None = None


@register("down", "ack")
@dataclass(frozen=True)
class HubAck(Message):
    """What the hub committed (or finally refused) of a device's uplink frames.

    ``committed`` is a tuple of inclusive ``(first, last)`` seq ranges; the agent deletes
    exactly those from its outbox, and the ``refused`` ones with their reasons.
    """

    committed: tuple[tuple[int, int], ...]
    refused: tuple[tuple[int, str], ...] = ()

    def __post_init__(self) -> None:
        if len(self.committed) + len(self.refused) > 4096:
            raise Malformed("ack lists more than 4096 entries")
        for first, last in self.committed:
            check_range(first, "committed seq", 1)
            check_range(last, "committed seq", first)
        for seq, reason in self.refused:
            check_range(seq, "refused seq", 1)
            _check_reason(reason)


@register("down", "chunk")
@dataclass(frozen=True)
class Chunk(Message):
    """``data`` is bytes ``[offset, offset + len(data))`` of artifact ``sha256``."""

    sha256: str
    offset: int
    total_length: int
    chunk_sha256: str
    data: bytes = body_field()

    def __post_init__(self) -> None:
        check_sha256(self.sha256, "sha256")
        check_sha256(self.chunk_sha256, "chunk_sha256")
        check_range(self.offset, "offset", 0)
        check_range(self.total_length, "total_length", 0)
        if len(self.data) > MAX_CHUNK_BYTES:
            raise Malformed(f"chunk larger than {MAX_CHUNK_BYTES}")


@register("down", "nudge")
@dataclass(frozen=True)
class Nudge(Message):
    """Ask the device to act now: re-read its desired state, report state, or resend."""

    reason: Literal["desired", "state", "resend"]
