"""The checked-in vectors under tests/vectors/ match what the code produces and decodes."""

from __future__ import annotations

import json

import pytest

from protocol import frame, keys
from protocol.tensors import decode_tensors
from tests.vectors import generate

INDEX = json.loads((generate.HERE / "index.json").read_text())


def test_code_reproduces_every_checked_in_vector_byte_for_byte() -> None:
    for name, data in generate.build().items():
        assert (generate.HERE / name).read_bytes() == data, (
            f"{name} drifted: the wire format changed. If deliberate, run "
            "`python -m tests.vectors.generate`, update docs/protocol.md and say so in the commit."
        )


@pytest.mark.parametrize("entry", INDEX, ids=[e["file"] for e in INDEX])
def test_vector_decodes_to_its_documented_message(entry: dict[str, object]) -> None:
    wire = (generate.HERE / str(entry["file"])).read_bytes()
    public = keys.public_from_hex(str(entry["public_key"]))
    envelope = frame.decode(wire, public, expect_kind=str(entry["kind"]))
    assert envelope.header.seq == entry["seq"]
    assert frame.open_frame(wire).fields == entry["msg"]
    body = getattr(envelope.message, type(envelope.message)._BODY or "", b"")
    assert body.hex() == entry["body_hex"]


def test_delta_vector_carries_a_real_tensor_container() -> None:
    [entry] = [e for e in INDEX if e["kind"] == "up.delta"]
    tensors = decode_tensors(bytes.fromhex(str(entry["body_hex"])))
    assert {name: t.shape for name, t in tensors.items()} == {
        "head.bias": (3,),
        "head.weight": (3, 4),
    }
