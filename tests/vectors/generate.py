"""Test vectors: frames produced by the code, checked in under tests/vectors/.

Run ``python -m tests.vectors.generate`` to rewrite them after a deliberate format change
(and say so in the commit); ``tests/protocol/test_vectors.py`` fails whenever the code
and the checked-in bytes disagree, so the wire format never drifts silently. Keys, nonces
and times are fixed, and Ed25519 signatures are deterministic, so the bytes are too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import frame, keys, schema
from protocol import messages as m
from protocol.broker_auth import make_verifier
from protocol.sketches import FeatureSketch, PredictionSketch
from protocol.tensors import encode_tensors

HERE = Path(__file__).parent
DEVICE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
HUB_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
SENT_AT = 1_795_000_000_000  # 2026-11-18T08:53:20Z
MODEL = m.ModelRef("vision", 3, "5" * 64)

FRAMES: dict[str, frame.Message] = {
    "hello": m.Hello(
        public_key=keys.public_hex(DEVICE_KEY.public_key()),
        agent_version="0.1.0",
        tags={"region": "eu-west", "hardware": "rpi4"},
        enrollment_token="tok-123",
        broker_verifier=make_verifier("device broker password", bytes(range(12))),
    ),
    "state": m.StateReport(
        active=MODEL,
        install=m.InstallOutcome(4, MODEL, "installed"),
        trust=m.TrustVersions(root=1, release=2, assignment=4, heartbeat=17),
        retrain="on",
    ),
    "telemetry": m.Telemetry(uptime_s=3600.0, inference_count=1200, latency_p50_ms=1.5),
    "delta": m.DeltaUpload(
        base=MODEL,
        num_samples=256,
        metric="accuracy",
        before=0.81,
        after=0.9,
        clip_norm=10.0,
        tensors=encode_tensors(  # a real container: the delta of a 3-class head on 4 features
            {
                "head.weight": np.arange(-6, 6, dtype=np.float32).reshape(3, 4) / 8,
                "head.bias": np.array([0.5, -0.25, 0.0], dtype=np.float32),
            },
            encoding="i8",
        ),
    ),
    "data": m.DataDelta(
        window_start=SENT_AT - 60_000,
        window_end=SENT_AT,
        features=(FeatureSketch("x0", (3, 5, 2), underflow=1, n=10, mean=0.5, m2=2.5),),
        predictions=PredictionSketch("classes", (6, 4)),
        model=MODEL,
        inference_count=10,
        shadow=m.ShadowReport(
            model=m.ModelRef("vision", 4, "6" * 64),
            inputs=(6, 4),
            agreed=(5, 4),
            outputs=(5, 5),
            errors=1,
            latency_p95_ms=2.5,
        ),
    ),
    "fetch": m.FetchRequest(sha256=MODEL.sha256, offset=131072, length=131072),
    "device-ack": m.DeviceAck(ref_seq=9, ref_kind="desired", status="accepted"),
    "desired": m.DesiredState(config=m.DeviceConfig(window_s=30.0)),
    "hub-ack": m.HubAck(committed=((1, 5), (7, 7)), refused=((6, "stale"),)),
    "chunk": m.Chunk(
        sha256=MODEL.sha256,
        offset=0,
        total_length=5,
        chunk_sha256="2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        data=b"hello",
    ),
    "nudge": m.Nudge(reason="desired"),
}


def signer(message: frame.Message) -> Ed25519PrivateKey:
    return DEVICE_KEY if message.DIRECTION == "up" else HUB_KEY


def build() -> dict[str, bytes]:
    """Every vector file's name and bytes."""
    files: dict[str, bytes] = {}
    index = []
    for seq, (name, message) in enumerate(FRAMES.items(), start=1):
        key = signer(message)
        files[f"{name}.frame"] = frame.encode(
            message,
            device_id="dev-1",
            seq=seq,
            sent_at=SENT_AT,
            nonce=bytes([seq]) * 16,
            key=key,
        )
        fields = schema.to_json(message)
        body = getattr(message, message._BODY).hex() if message._BODY else ""
        index.append(
            {
                "file": f"{name}.frame",
                "kind": message.qualified_kind(),
                "payload_type": frame.payload_type(message.qualified_kind()),
                "public_key": keys.public_hex(key.public_key()),
                "seq": seq,
                "msg": {k: v for k, v in fields.items() if k != message._BODY},
                "body_hex": body,
            }
        )
    files["index.json"] = (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()
    return files


def main() -> None:
    for name, data in build().items():
        (HERE / name).write_bytes(data)
    print(f"wrote {len(FRAMES)} frame vectors to {HERE}")


if __name__ == "__main__":
    main()
