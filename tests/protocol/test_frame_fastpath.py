"""The decoder's fast paths decide exactly what the plain ones do: a header in the form
encode writes skips parsing its top level, and verify_all checks a batch's signatures
back to back; neither accepts or refuses anything differently."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import canonical, frame, keys
from protocol import messages as m
from protocol.errors import BadSignature, Malformed, NonFinite, ProtocolError
from tests.vectors import generate

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
MODEL = m.ModelRef("kws", 3, "ab" * 32)
TELEMETRY = m.Telemetry(uptime_s=12.5, inference_count=3, latency_p50_ms=1.25, model=MODEL)


def encode(message: frame.Message = TELEMETRY, key: Ed25519PrivateKey = KEY) -> bytes:
    return frame.encode(
        message, device_id="dev-1", seq=7, sent_at=1_795_000_000_000, nonce=bytes(16), key=key
    )


def forge(head: bytes, kind: str = "up.telemetry") -> bytes:
    unsigned = struct.pack(">2sBI", b"EF", 1, len(head)) + head
    return unsigned + keys.sign(KEY, frame.payload_type(kind), unsigned)


def head(**changes: object) -> dict[str, object]:
    value: dict[str, object] = {
        "kind": "up.telemetry",
        "device_id": "dev-1",
        "seq": 7,
        "sent_at": 1000,
        "nonce": "00" * 16,
        "body_sha256": hashlib.sha256(b"").hexdigest(),
        "msg": {"uptime_s": 1.5, "model": {"name": "kws", "version": 3, "sha256": "ab" * 32}},
    }
    value.update(changes)
    return value


def test_a_header_not_in_canonical_form_decodes_as_before() -> None:
    canonical_form = frame.decode(forge(canonical.dumps(head())), KEY.public_key())
    spaced = frame.decode(forge(json.dumps(head(), indent=1).encode()), KEY.public_key())
    assert spaced == canonical_form
    assert spaced.message == m.Telemetry(uptime_s=1.5, model=MODEL)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        pytest.param(
            canonical.dumps(head()).replace(b'{"model"', b'{"uptime_s":2.0,"model"'),
            Malformed,
            id="duplicate-key-in-msg",
        ),
        pytest.param(
            canonical.dumps(head()).replace(b'"seq":7}', b'"seq":7,"seq":8}'),
            Malformed,
            id="duplicate-key-at-top",
        ),
        pytest.param(
            canonical.dumps(head()).replace(b'"uptime_s":1.5', b'"uptime_s":NaN'),
            NonFinite,
            id="nan-in-msg",
        ),
        pytest.param(canonical.dumps(head(seq=2**63)), Malformed, id="seq-past-64-bits"),
        pytest.param(canonical.dumps(head(sent_at=2**63)), Malformed, id="sent-at-past-64-bits"),
        pytest.param(canonical.dumps(head(kind="up.evil")), Malformed, id="unknown-kind"),
        pytest.param(canonical.dumps(head(msg=[])), Malformed, id="msg-not-an-object"),
        pytest.param(
            canonical.dumps(head()).replace(
                b'"msg":{', b'"msg":{"deep":' + b"[" * 5000 + b"]" * 5000 + b","
            ),
            Malformed,
            id="nesting-in-msg",
        ),
    ],
)
def test_headers_in_canonical_form_are_refused_like_any_other(raw: bytes, error: type) -> None:
    with pytest.raises(error):
        frame.open_frame(forge(raw))


def test_every_checked_in_vector_takes_the_fast_path() -> None:
    frames = {name: data for name, data in generate.build().items() if name.endswith(".frame")}
    assert len(frames) == len(frame.REGISTRY)
    for name, wire in frames.items():
        length = struct.unpack_from(">I", wire, 3)[0]
        text = wire[7 : 7 + length].decode()
        assert frame._CANONICAL_HEADER.fullmatch(text) is not None, name


def test_payload_types_are_the_documented_strings() -> None:
    for kind in frame.REGISTRY:
        assert frame.payload_type(kind) == f"application/vnd.edgefleet.{kind}+frame; v=1"
    assert frame.payload_type("up.state", 2) == "application/vnd.edgefleet.up.state+frame; v=2"


def test_verify_all_gives_what_verify_gives_one_by_one() -> None:
    good = frame.open_frame(encode())
    unknown_field = frame.open_frame(
        forge(canonical.dumps(head(msg={"uptime_s": 1.0, "battery_pct": 80})))
    )
    bodied = frame.open_frame(encode(m.Chunk("a" * 64, 0, 3, "b" * 64, data=b"abc")))
    cases: list[tuple[frame.Opened, object]] = [
        (good, KEY.public_key()),
        (good, OTHER.public_key()),
        (good, [OTHER.public_key(), KEY.public_key()]),
        (good, []),
        (unknown_field, KEY.public_key()),
        (bodied, KEY.public_key()),
    ]
    batch = frame.verify_all(cases)  # type: ignore[arg-type]
    for (opened, verifying), result in zip(cases, batch, strict=True):
        assert describe(result) == describe(one_by_one(opened, verifying))
    assert isinstance(batch[1], BadSignature)
    assert isinstance(batch[4], Malformed)


def one_by_one(opened: frame.Opened, verifying: object) -> object:
    try:
        return opened.verify(verifying)  # type: ignore[arg-type]
    except ProtocolError as e:
        return e


def describe(outcome: object) -> object:
    """Envelopes compare by value; errors by type and message."""
    if isinstance(outcome, ProtocolError):
        return (type(outcome), str(outcome))
    return outcome
