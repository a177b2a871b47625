"""The signed frame: round trips, tampering, kind confusion, bombs and bounds."""

from __future__ import annotations

import base64
import hashlib
import json
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import frame, keys
from protocol import messages as m
from protocol.errors import (
    BadSignature,
    IdentityMismatch,
    Malformed,
    NonFinite,
    Oversize,
    ProtocolError,
    UnknownVersion,
    WrongKind,
)
from protocol.frame import Message
from protocol.topics import DOWN_KINDS, UP_KINDS
from tests.protocol.strategies import MESSAGES

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
NONCE = bytes(16)
TELEMETRY = m.Telemetry(uptime_s=12.5, inference_count=3, latency_p50_ms=1.25)


def encode(message: Message = TELEMETRY, **overrides: object) -> bytes:
    args: dict[str, object] = {
        "device_id": "dev-1",
        "seq": 7,
        "sent_at": 1_795_000_000_000,
        "nonce": NONCE,
        "key": KEY,
    }
    args.update(overrides)
    return frame.encode(message, **args)  # type: ignore[arg-type]


def forge(head: bytes, body: bytes = b"", *, kind: str = "up.telemetry", version: int = 1) -> bytes:
    """A frame with an arbitrary header, correctly signed: rejections come from parsing."""
    unsigned = struct.pack(">2sBI", b"EF", version, len(head)) + head + body
    return unsigned + keys.sign(KEY, frame.payload_type(kind), unsigned)


def header_json(**changes: object) -> dict[str, object]:
    head: dict[str, object] = {
        "kind": "up.telemetry",
        "device_id": "dev-1",
        "seq": 1,
        "sent_at": 1000,
        "nonce": "00" * 16,
        "body_sha256": hashlib.sha256(b"").hexdigest(),
        "msg": {"uptime_s": 1.0},
    }
    head.update(changes)
    return head


def test_every_topic_kind_has_a_message_class() -> None:
    assert set(frame.REGISTRY) == {f"up.{k}" for k in UP_KINDS} | {f"down.{k}" for k in DOWN_KINDS}


@pytest.mark.parametrize("kind", sorted(MESSAGES))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_decode_inverts_encode_for_every_kind(kind: str, data: st.DataObject) -> None:
    message = data.draw(MESSAGES[kind])
    seq = data.draw(st.integers(1, 2**63 - 1))
    wire = encode(message, seq=seq)
    envelope = frame.decode(wire, KEY.public_key(), expect_kind=kind, expect_device="dev-1")
    assert envelope.message == message
    assert envelope.header.seq == seq
    assert envelope.header.kind == kind


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_decoder_raises_only_protocol_errors_on_arbitrary_bytes(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        frame.decode(data, KEY.public_key())


@settings(max_examples=300, deadline=None)
@given(position=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_any_flipped_bit_is_refused(position: int, bit: int) -> None:
    wire = bytearray(encode())
    wire[position % len(wire)] ^= 1 << bit
    with pytest.raises(ProtocolError):
        frame.decode(bytes(wire), KEY.public_key())


@settings(max_examples=100, deadline=None)
@given(cut=st.integers(0, 10_000))
def test_truncated_frames_are_refused(cut: int) -> None:
    wire = encode()
    with pytest.raises(ProtocolError):
        frame.decode(wire[: cut % len(wire)], KEY.public_key())


def test_tampered_header_is_refused() -> None:
    wire = encode()
    tampered = wire.replace(b'"inference_count":3', b'"inference_count":9')
    assert tampered != wire
    with pytest.raises(BadSignature):
        frame.decode(tampered, KEY.public_key())


def test_tampered_body_is_refused() -> None:
    delta = m.DeltaUpload(
        base=m.ModelRef("m", 1, "a" * 64),
        num_samples=10,
        metric="accuracy",
        before=0.5,
        after=0.6,
        clip_norm=1.0,
        tensors=b"\x01\x02\x03\x04",
    )
    wire = bytearray(encode(delta))
    body_at = len(wire) - keys.SIGNATURE_SIZE - 2
    wire[body_at] ^= 0xFF
    with pytest.raises(Malformed, match="body_sha256"):
        frame.decode(bytes(wire), KEY.public_key())


def test_tampered_body_with_matching_hash_is_refused_by_signature() -> None:
    delta = m.DeltaUpload(
        base=m.ModelRef("m", 1, "a" * 64),
        num_samples=10,
        metric="accuracy",
        before=0.5,
        after=0.6,
        clip_norm=1.0,
        tensors=b"good",
    )
    wire = encode(delta)
    forged = wire.replace(
        hashlib.sha256(b"good").hexdigest().encode(), hashlib.sha256(b"evil").hexdigest().encode()
    )
    forged = forged.replace(b"good" + wire[-64:], b"evil" + wire[-64:])
    with pytest.raises(BadSignature):
        frame.decode(forged, KEY.public_key())


def test_frame_signed_by_another_key_is_refused() -> None:
    with pytest.raises(BadSignature):
        frame.decode(encode(key=OTHER), KEY.public_key())


def test_any_of_several_trusted_keys_verifies() -> None:
    envelope = frame.decode(encode(key=OTHER), [KEY.public_key(), OTHER.public_key()])
    assert envelope.message == TELEMETRY


def test_signature_for_one_kind_does_not_verify_as_another() -> None:
    """Rewrite a state frame's kind to telemetry and keep the signature: the payload type
    is inside the signature, so it must fail even though the bytes are otherwise valid."""
    state = encode(m.StateReport(active=None))
    sig = state[-64:]
    head_len = struct.unpack_from(">I", state, 3)[0]
    head = json.loads(state[7 : 7 + head_len])
    head["kind"] = "up.telemetry"
    head["msg"] = {"uptime_s": 1.0}
    new_head = json.dumps(head, sort_keys=True, separators=(",", ":")).encode()
    confused = struct.pack(">2sBI", b"EF", 1, len(new_head)) + new_head + sig
    with pytest.raises(BadSignature):
        frame.decode(confused, KEY.public_key())
    # and the original bytes on the wrong topic are refused before the signature check
    with pytest.raises(WrongKind):
        frame.decode(state, KEY.public_key(), expect_kind="up.telemetry")


def test_up_and_down_acks_are_different_kinds() -> None:
    down = encode(m.HubAck(committed=((1, 3),)))
    with pytest.raises(WrongKind):
        frame.decode(down, KEY.public_key(), expect_kind="up.ack")


def test_topic_device_mismatch_is_refused() -> None:
    with pytest.raises(IdentityMismatch):
        frame.decode(encode(), KEY.public_key(), expect_device="dev-2")


def test_oversize_frame_is_refused_before_parsing() -> None:
    limits = frame.Limits(max_frame_bytes=1024)
    huge = b"EF\x01" + b"\xff" * 2000
    with pytest.raises(Oversize):
        frame.decode(huge, KEY.public_key(), limits=limits)


def test_encoder_refuses_to_build_an_oversize_frame() -> None:
    big = m.Chunk(
        sha256="a" * 64, offset=0, total_length=1, chunk_sha256="b" * 64, data=b"x" * 100_000
    )
    with pytest.raises(Oversize):
        encode(big, limits=frame.Limits(max_frame_bytes=50_000))


@pytest.mark.parametrize(
    ("magic", "version", "error"),
    [
        pytest.param(b"EF", 2, UnknownVersion, id="future-version"),
        pytest.param(b"EF", 0, UnknownVersion, id="version-zero"),
        pytest.param(b"XX", 1, UnknownVersion, id="bad-magic"),
    ],
)
def test_unknown_protocol_version_is_refused(magic: bytes, version: int, error: type) -> None:
    wire = encode()
    altered = struct.pack(">2sB", magic, version) + wire[3:]
    with pytest.raises(error):
        frame.decode(altered, KEY.public_key())


def _nested(depth: int) -> bytes:
    return b'{"kind":"up.telemetry","msg":' + b"[" * depth + b"]" * depth + b"}"


BAD_HEADERS = [
    pytest.param(b"", Malformed, id="empty"),
    pytest.param(b"{", Malformed, id="truncated-json"),
    pytest.param(b"\xff\xfe{}", Malformed, id="invalid-utf8"),
    pytest.param(b"[]", Malformed, id="not-an-object"),
    pytest.param(_nested(100_000), Malformed, id="nesting-bomb"),
    pytest.param(
        json.dumps(header_json(seq=int("9" * 4000))).encode(), Malformed, id="huge-integer"
    ),
    pytest.param(b'{"seq":' + b"9" * 100_000 + b"}", Malformed, id="million-digit-integer"),
    pytest.param(
        json.dumps(header_json()).encode().replace(b'"seq": 1', b'"seq": 1, "seq": 2'),
        Malformed,
        id="duplicate-keys",
    ),
    pytest.param(
        json.dumps(header_json()).encode().replace(b'"uptime_s": 1.0', b'"uptime_s": NaN'),
        NonFinite,
        id="nan-token",
    ),
    pytest.param(
        json.dumps(header_json()).encode().replace(b'"uptime_s": 1.0', b'"uptime_s": Infinity'),
        NonFinite,
        id="infinity-token",
    ),
    pytest.param(
        json.dumps(header_json()).encode().replace(b'"uptime_s": 1.0', b'"uptime_s": 1e999'),
        NonFinite,
        id="overflowing-float",
    ),
    pytest.param(json.dumps(header_json(seq=0)).encode(), Malformed, id="seq-zero"),
    pytest.param(json.dumps(header_json(seq=True)).encode(), Malformed, id="bool-as-int"),
    pytest.param(json.dumps(header_json(seq=2**64)).encode(), Malformed, id="seq-over-64-bits"),
    pytest.param(json.dumps(header_json(device_id="a/+/#")).encode(), Malformed, id="wildcard-id"),
    pytest.param(json.dumps(header_json(kind="up.evil")).encode(), Malformed, id="unknown-kind"),
    pytest.param(json.dumps(header_json(nonce="zz")).encode(), Malformed, id="bad-nonce"),
    pytest.param(json.dumps(header_json(extra=1)).encode(), Malformed, id="unknown-header-field"),
    pytest.param(
        json.dumps(header_json(msg={"uptime_s": 1.0, "evil": 1})).encode(),
        Malformed,
        id="unknown-message-field",
    ),
    pytest.param(
        json.dumps(header_json(msg={"uptime_s": -1.0})).encode(), Malformed, id="out-of-range"
    ),
    pytest.param(json.dumps(header_json(msg={})).encode(), Malformed, id="missing-field"),
]


@pytest.mark.parametrize(("head", "error"), BAD_HEADERS)
def test_bad_headers_are_refused_even_when_signed(head: bytes, error: type) -> None:
    with pytest.raises(error):
        frame.decode(forge(head), KEY.public_key())


def test_a_signed_lone_surrogate_is_refused_before_it_can_fail_to_store() -> None:
    """``"\\ud800"`` parses but can never be written back as UTF-8: a hub that accepted it
    could not store the frame, never acknowledge it, and the device would resend forever."""
    genuine = encode(m.StateReport(active=None, retrain="MARK"))
    (length,) = struct.unpack(">I", genuine[3:7])
    head = genuine[7 : 7 + length].replace(b"MARK", b"\\ud800")
    with pytest.raises(Malformed, match="lone surrogate"):
        frame.decode(forge(head, kind="up.state"), KEY.public_key())


def test_decoder_refuses_a_body_on_a_bodyless_kind() -> None:
    body = b"sneaky"
    head = json.dumps(header_json(body_sha256=hashlib.sha256(body).hexdigest())).encode()
    with pytest.raises(Malformed, match="carries no body"):
        frame.decode(forge(head, body), KEY.public_key())


def test_frame_signature_verifies_with_an_independent_dsse_implementation() -> None:
    """securesystemslib's DSSE code checks our frame: payload = frame minus signature."""
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import VerificationError
    from securesystemslib.signer import SSlibKey

    wire = encode()
    public = keys.public_hex(KEY.public_key())
    keyid = keys.keyid(KEY.public_key())
    key = SSlibKey(keyid, "ed25519", "ed25519", {"public": public})
    envelope = Envelope.from_dict(
        {
            "payload": base64.b64encode(wire[:-64]).decode(),
            "payloadType": frame.payload_type("up.telemetry"),
            "signatures": [{"keyid": keyid, "sig": base64.b64encode(wire[-64:]).decode()}],
        }
    )
    assert keyid in envelope.verify([key], 1)
    tampered = Envelope(envelope.payload, frame.payload_type("up.state"), envelope.signatures)
    with pytest.raises(VerificationError):
        tampered.verify([key], 1)


def test_open_frame_exposes_a_hello_key_before_verification() -> None:
    """Enrollment finds the claimed key inside an unverified hello, then verifies with it."""
    hello = m.Hello(public_key=keys.public_hex(OTHER.public_key()), agent_version="1.0")
    wire = encode(hello, key=OTHER)
    opened = frame.open_frame(wire)
    claimed = keys.public_from_hex(opened.fields["public_key"])
    assert opened.verify(claimed).message == hello
    with pytest.raises(BadSignature):
        frame.open_frame(encode(hello, key=KEY)).verify(claimed)
