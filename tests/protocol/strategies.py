"""Hypothesis strategies for every frame message kind (valid values only)."""

from __future__ import annotations

import base64
import string

from hypothesis import strategies as st

from protocol import messages as m
from protocol.broker_auth import make_verifier
from protocol.documents import DocSignature, SignedDocument
from protocol.frame import Message
from protocol.sketches import FeatureSketch, PredictionSketch

names = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True)
sha256s = st.text("0123456789abcdef", min_size=64, max_size=64)
short_text = st.text(string.printable, max_size=40)
counts = st.integers(0, 10**9)
positive = st.integers(1, 2**62)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
non_negative = st.floats(0, 1e12, allow_nan=False)
model_refs = st.builds(m.ModelRef, name=names, version=st.integers(1, 10**6), sha256=sha256s)

feature_sketches = st.builds(
    FeatureSketch,
    name=short_text,
    counts=st.lists(counts, max_size=12).map(tuple),
    underflow=counts,
    overflow=counts,
    nan=counts,
    n=counts,
    mean=finite,
    m2=non_negative,
    min=st.none() | finite,
    max=st.none() | finite,
)
prediction_sketches = st.builds(
    PredictionSketch,
    kind=st.sampled_from(["classes", "bins"]),
    counts=st.lists(counts, max_size=12).map(tuple),
    underflow=counts,
    overflow=counts,
    nan=counts,
)
signed_docs = st.builds(
    SignedDocument,
    payload=st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
    payloadType=short_text,
    signatures=st.lists(
        st.builds(DocSignature, keyid=sha256s, sig=st.text("abcdef0123456789+/=", max_size=88)),
        max_size=3,
    ).map(tuple),
)


@st.composite
def shadow_reports(draw: st.DrawFn) -> m.ShadowReport:
    """A valid shadow report: ``agreed[c] <= inputs[c]``, errors within the inputs."""
    inputs = draw(st.lists(st.integers(0, 10**6), max_size=8))
    agreed = [draw(st.integers(0, n)) for n in inputs]
    return m.ShadowReport(
        model=draw(model_refs),
        inputs=tuple(inputs),
        agreed=tuple(agreed),
        outputs=tuple(draw(st.lists(counts, max_size=8))),
        errors=draw(st.integers(0, sum(inputs))),
        latency_p95_ms=draw(non_negative),
    )


MESSAGES: dict[str, st.SearchStrategy[Message]] = {
    "up.hello": st.builds(
        m.Hello,
        public_key=sha256s,
        agent_version=st.text(string.printable, max_size=20),
        tags=st.dictionaries(names, st.text(max_size=20), max_size=4),
        enrollment_token=st.none() | st.text(max_size=40),
        active=st.none() | model_refs,
        broker_verifier=st.none()
        | st.builds(
            make_verifier,
            password=st.text(min_size=1, max_size=20),
            salt=st.binary(min_size=12, max_size=12),
            iterations=st.integers(1, 3),
        ),
    ),
    "up.state": st.builds(
        m.StateReport,
        active=st.none() | model_refs,
        previous=st.none() | model_refs,
        install=st.none()
        | st.builds(
            m.InstallOutcome,
            assignment_version=counts,
            model=model_refs,
            status=st.sampled_from(
                ["downloading", "installed", "refused", "failed", "rolled_back", "unchanged"]
            ),
            reason=short_text,
        ),
        trust=st.builds(
            m.TrustVersions, root=counts, release=counts, assignment=counts, heartbeat=counts
        ),
        flags=st.lists(names, max_size=3).map(tuple),
        retrain=short_text,
    ),
    "up.telemetry": st.builds(
        m.Telemetry,
        uptime_s=non_negative,
        inference_count=counts,
        error_count=counts,
        latency_p50_ms=non_negative,
        latency_p95_ms=non_negative,
        outbox_depth=counts,
        outbox_dropped=counts,
        model=st.none() | model_refs,
    ),
    "up.delta": st.builds(
        m.DeltaUpload,
        base=model_refs,
        num_samples=positive,
        metric=st.sampled_from(["accuracy", "mse"]),
        before=finite,
        after=finite,
        clip_norm=non_negative,
        tensors=st.binary(max_size=2048),
        round_id=st.none() | names,
    ),
    "up.data": st.integers(0, 2**40).flatmap(
        lambda start: st.builds(
            m.DataDelta,
            window_start=st.just(start),
            window_end=st.integers(start, start + 10**9),
            features=st.lists(feature_sketches, max_size=3).map(tuple),
            predictions=st.none() | prediction_sketches,
            model=st.none() | model_refs,
            inference_count=counts,
            error_count=counts,
            latency_p50_ms=finite,
            latency_p95_ms=finite,
            shadow=st.none() | shadow_reports(),
        )
    ),
    "up.ack": st.builds(
        m.DeviceAck,
        ref_seq=positive,
        ref_kind=names,
        status=st.sampled_from(["accepted", "refused", "duplicate"]),
        reason=short_text,
    ),
    "up.fetch": st.builds(
        m.FetchRequest, sha256=sha256s, offset=counts, length=st.integers(1, m.MAX_CHUNK_BYTES)
    ),
    "down.desired": st.builds(
        m.DesiredState,
        config=st.builds(
            m.DeviceConfig,
            telemetry_interval_s=st.floats(0.1, 86400),
            window_s=st.floats(0.1, 86400),
            retrain=st.booleans(),
            retrain_min_samples=st.integers(1, 10**6),
            delta_clip_norm=non_negative,
            round_id=st.none() | names,
            shadow_sample=st.floats(0.0, 1.0),
        ),
        assignment=st.none() | signed_docs,
        release_list=st.none() | signed_docs,
        shadow=st.none() | signed_docs,
    ),
    "down.ack": st.builds(
        m.HubAck,
        committed=st.lists(
            st.tuples(positive, st.integers(0, 100)).map(lambda p: (p[0], p[0] + p[1])),
            max_size=4,
        ).map(tuple),
        refused=st.lists(st.tuples(positive, short_text), max_size=3).map(tuple),
    ),
    "down.chunk": st.builds(
        m.Chunk,
        sha256=sha256s,
        offset=counts,
        total_length=counts,
        chunk_sha256=sha256s,
        data=st.binary(max_size=4096),
    ),
    "down.nudge": st.builds(m.Nudge, reason=st.sampled_from(["desired", "state", "resend"])),
}
