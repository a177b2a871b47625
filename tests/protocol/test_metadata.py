"""The trust documents: validation tables, the sign/parse round trip, DSSE interoperability."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import keys, metadata, schema
from protocol.documents import SignedDocument, add_signature, document_type
from protocol.errors import Malformed, NonFinite, WrongKind
from protocol.metadata import (
    Assignment,
    Compat,
    Heartbeat,
    ReleaseEntry,
    ReleaseList,
    Root,
    make_root,
)
from tests.protocol.trust_sim import T0, TrustSim, fixed_key

POOL = [fixed_key(f"pool-{i}") for i in range(6)]

# ---------------------------------------------------------------- strategies

names = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True)
sha256s = st.text("0123456789abcdef", min_size=64, max_size=64)
times = st.integers(0, 2**53)
versions = st.integers(1, 2**62)
compats = st.builds(
    Compat, opset=st.integers(1, 1000), io_signature=st.text(min_size=1, max_size=40)
)
entries = st.builds(
    ReleaseEntry,
    name=names,
    version=versions,
    release_counter=versions,
    sha256=sha256s,
    length=versions,
    compat=compats,
)


@st.composite
def roots(draw: st.DrawFn) -> Root:
    def role() -> tuple[list[Any], int]:
        chosen = draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=4, unique=True))
        return [k.public_key() for k in chosen], draw(st.integers(1, len(chosen)))

    return make_root(
        version=draw(versions),
        expires=draw(times),
        roles={r: role() for r in metadata.ROLES},
    )


@st.composite
def release_lists(draw: st.DrawFn) -> ReleaseList:
    drawn = draw(st.lists(entries, max_size=5, unique_by=lambda e: (e.name, e.version)))
    counters = sorted(draw(st.sets(versions, min_size=len(drawn), max_size=len(drawn))))
    ordered = tuple(
        ReleaseEntry(e.name, e.version, c, e.sha256, e.length, e.compat)
        for e, c in zip(drawn, counters, strict=True)
    )
    return ReleaseList(version=draw(versions), expires=draw(times), entries=ordered)


assignments = st.builds(
    Assignment,
    device_id=names,
    version=versions,
    expires=times,
    release_version=versions,
    release_sha256=sha256s,
    entry=entries,
)
heartbeats = times.flatmap(
    lambda issued: st.builds(
        Heartbeat,
        version=versions,
        issued_at=st.just(issued),
        expires=st.integers(issued + 1, issued + 2**40),
        release_version=versions,
        release_sha256=sha256s,
    )
)
DOCUMENTS: dict[str, st.SearchStrategy[metadata.Meta]] = {
    "root": roots(),
    "release": release_lists(),
    "assignment": assignments,
    "heartbeat": heartbeats,
}


@pytest.mark.parametrize("kind", sorted(DOCUMENTS))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_parse_inverts_sign_for_every_document(kind: str, data: st.DataObject) -> None:
    meta = data.draw(DOCUMENTS[kind])
    doc = metadata.sign(meta, [POOL[0]])
    assert metadata.parse(type(meta), doc) == meta
    assert SignedDocument.from_bytes(doc.to_bytes()) == doc


# ---------------------------------------------------------------- invalid documents


def _valid_json() -> dict[str, Any]:
    sim = TrustSim()
    return {
        "root": schema.to_json(sim.root.build()),
        "release": schema.to_json(sim.release.build()),
        "assignment": schema.to_json(sim.assignment.build()),
        "heartbeat": schema.to_json(sim.heartbeat.build()),
    }


VALID = _valid_json()
CLASSES: dict[str, type[metadata.Meta]] = {
    "root": Root,
    "release": ReleaseList,
    "assignment": Assignment,
    "heartbeat": Heartbeat,
}
Edit = Callable[[dict[str, Any]], None]


def _root_role(role: str) -> dict[str, Any]:
    spec: dict[str, Any] = VALID["root"]["roles"][role]
    return spec


def _first_keyid() -> str:
    return str(next(iter(VALID["root"]["keys"])))


def _second_entry(doc: dict[str, Any], **changes: Any) -> None:
    entry = {**doc["entries"][0], **changes}
    doc["entries"].append(entry)


INVALID: list[Any] = [
    pytest.param("root", lambda d: d.update(version=0), id="root-version-zero"),
    pytest.param("root", lambda d: d.update(version=1.0), id="root-float-version"),
    pytest.param("root", lambda d: d.update(expires=-1), id="root-negative-expiry"),
    pytest.param("root", lambda d: d["roles"].pop("rollout"), id="root-missing-role"),
    pytest.param(
        "root", lambda d: d["roles"].update(targets=_root_role("root")), id="root-extra-role"
    ),
    pytest.param(
        "root", lambda d: d["roles"]["rollout"].update(threshold=0), id="role-threshold-zero"
    ),
    pytest.param(
        "root",
        lambda d: d["roles"]["rollout"].update(threshold=2),
        id="role-threshold-above-its-keys",
    ),
    pytest.param(
        "root",
        lambda d: d["roles"]["rollout"].update(keyids=d["roles"]["rollout"]["keyids"] * 2),
        id="role-lists-keyid-twice",
    ),
    pytest.param(
        "root", lambda d: d["roles"]["rollout"].update(keyids=["cd" * 32]), id="role-unknown-key"
    ),
    pytest.param(
        "root",
        lambda d: d["keys"].update({"cd" * 32: {"keytype": "ed25519", "public": "ef" * 32}}),
        id="key-under-wrong-keyid",
    ),
    pytest.param(
        "root",
        lambda d: d["keys"].update(
            {keys.keyid(POOL[5].public_key()): schema.to_json(_spec(POOL[5]))}
        ),
        id="key-no-role-uses",
    ),
    pytest.param(
        "root", lambda d: d["keys"][_first_keyid()].update(keytype="rsa"), id="key-not-ed25519"
    ),
    pytest.param(
        "root", lambda d: d["keys"][_first_keyid()].update(public="zz" * 32), id="key-not-hex"
    ),
    pytest.param(
        "root",
        lambda d: d["keys"][_first_keyid()].update(public="AB" * 32),
        id="key-uppercase-hex",
    ),
    pytest.param("root", lambda d: d.update(extra=1), id="root-unknown-field"),
    pytest.param("release", lambda d: d.update(version=0), id="release-version-zero"),
    pytest.param(
        "release", lambda d: _second_entry(d, release_counter=7), id="release-same-name-version"
    ),
    pytest.param(
        "release", lambda d: _second_entry(d, version=2), id="release-counter-not-increasing"
    ),
    pytest.param(
        "release",
        lambda d: d["entries"][0].update(name="../../agent/config"),
        id="release-name-is-a-path",
    ),
    pytest.param(
        "release", lambda d: d["entries"][0].update(sha256="xy" * 32), id="release-sha-not-hex"
    ),
    pytest.param("release", lambda d: d["entries"][0].update(length=0), id="release-empty"),
    pytest.param(
        "release", lambda d: d["entries"][0]["compat"].update(opset=0), id="release-opset-zero"
    ),
    pytest.param(
        "release",
        lambda d: d["entries"][0]["compat"].update(io_signature=""),
        id="release-empty-io-signature",
    ),
    pytest.param(
        "release",
        lambda d: d["entries"][0].update(release_counter=0),
        id="release-counter-zero",
    ),
    pytest.param(
        "assignment", lambda d: d.update(device_id="dev/+/#"), id="assignment-wildcard-device"
    ),
    pytest.param("assignment", lambda d: d.update(version=0), id="assignment-version-zero"),
    pytest.param(
        "assignment", lambda d: d.update(release_sha256="0"), id="assignment-short-release-sha"
    ),
    pytest.param(
        "assignment", lambda d: d["entry"].update(length=-5), id="assignment-negative-length"
    ),
    pytest.param(
        "heartbeat",
        lambda d: d.update(expires=d["issued_at"]),
        id="heartbeat-expires-when-issued",
    ),
    pytest.param("heartbeat", lambda d: d.update(version=0), id="heartbeat-version-zero"),
    pytest.param("heartbeat", lambda d: d.update(issued_at=True), id="heartbeat-bool-time"),
]


def _spec(key: Ed25519PrivateKey) -> metadata.KeySpec:
    return metadata.KeySpec.of(key.public_key())


@pytest.mark.parametrize(("kind", "edit"), INVALID)
def test_invalid_documents_are_refused(kind: str, edit: Edit) -> None:
    values = copy.deepcopy(VALID[kind])
    edit(values)
    with pytest.raises(Malformed):
        schema.from_json(CLASSES[kind], values)


def test_every_valid_fixture_parses() -> None:
    for kind, cls in CLASSES.items():
        assert schema.to_json(schema.from_json(cls, VALID[kind])) == VALID[kind]


def test_document_of_one_kind_parsed_as_another_is_wrong_kind() -> None:
    sim = TrustSim()
    with pytest.raises(WrongKind):
        metadata.parse(Assignment, sim.heartbeat_doc())


def _with_payload(doc: SignedDocument, body: bytes) -> SignedDocument:
    return SignedDocument(base64.b64encode(body).decode(), doc.payloadType, doc.signatures)


def test_payload_that_is_not_canonical_json_is_refused() -> None:
    doc = TrustSim().heartbeat_doc()
    spaced = json.dumps(json.loads(doc.payload_bytes()), indent=1).encode()
    with pytest.raises(Malformed, match="canonical"):
        metadata.parse(Heartbeat, _with_payload(doc, spaced))


@pytest.mark.parametrize(
    ("body", "error"),
    [
        pytest.param(b"", Malformed, id="empty"),
        pytest.param(b"[]", Malformed, id="a-list"),
        pytest.param(b'{"version":NaN}', NonFinite, id="nan"),
        pytest.param(b'{"version":1,"version":2}', Malformed, id="duplicate-key"),
        pytest.param(b"\xff", Malformed, id="not-utf8"),
    ],
)
def test_bad_payload_bytes_are_refused(body: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        metadata.parse(Heartbeat, _with_payload(TrustSim().heartbeat_doc(), body))


def test_payload_sha256_survives_resigning_with_another_key() -> None:
    sim = TrustSim()
    doc = sim.release_doc()
    resigned = metadata.sign(sim.release.build(), [POOL[3]])
    assert metadata.payload_sha256(doc) == metadata.payload_sha256(resigned)
    assert metadata.payload_sha256(add_signature(doc, POOL[4])) == metadata.payload_sha256(doc)
    sim.release.version += 1
    assert metadata.payload_sha256(sim.release_doc()) != metadata.payload_sha256(doc)


def test_signing_with_no_keys_gives_a_pending_document() -> None:
    pending = metadata.sign(TrustSim().release.build(), [])
    assert pending.signatures == ()
    assert metadata.parse(ReleaseList, pending).version == 1


def test_role_keys_are_the_keys_the_root_lists_for_the_role() -> None:
    root = make_root(
        version=1,
        expires=T0,
        roles={
            "root": ([POOL[0].public_key(), POOL[1].public_key()], 2),
            "release": ([POOL[2].public_key()], 1),
            "rollout": ([POOL[3].public_key()], 1),
            "heartbeat": ([POOL[3].public_key()], 1),  # an online key may serve two roles
        },
    )
    assert sorted(root.role_keys("root")) == sorted(keys.keyid(k.public_key()) for k in POOL[:2])
    assert root.threshold("root") == 2
    assert root.role_keys("heartbeat") == root.role_keys("rollout")
    assert len(root.keys) == 4


def test_document_signature_verifies_with_an_independent_dsse_implementation() -> None:
    """securesystemslib's DSSE code checks our envelope as it is, keyid for keyid."""
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import VerificationError
    from securesystemslib.signer import SSlibKey

    sim = TrustSim(root_keys=3, root_threshold=2)
    doc = sim.root_chain[0]
    ssl_keys: list[Any] = [
        SSlibKey(keys.keyid(k.public_key()), "ed25519", "ed25519", {"public": pub})
        for k in sim.signers["root"]
        for pub in [keys.public_hex(k.public_key())]
    ]
    envelope = Envelope.from_dict(json.loads(doc.to_bytes()))
    assert envelope.verify(ssl_keys, 3).keys() == {k.keyid for k in ssl_keys}
    relabelled = Envelope(envelope.payload, document_type("release"), envelope.signatures)
    with pytest.raises(VerificationError):
        relabelled.verify(ssl_keys, 1)
