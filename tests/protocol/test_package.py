"""The model package accounts for every byte: unlisted files, altered files and names
outside the manifest's fixed set are refused (threat-model T5 (b), B21, B24). Its outer
sha256, checked before decoding, is what catches an edit inside the manifest itself."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import canonical, schema
from protocol.errors import Malformed, ProtocolError
from protocol.package import MAGIC, VERSION, decode_package, encode_package, file_entry
from tests import models
from tests.packages import build_package

BUILT = build_package(models.gemm_classifier(), name="iris", version=1)


def _repackaged(manifest_json: dict[str, object], body: bytes) -> bytes:
    head = canonical.dumps(manifest_json)
    return struct.pack(">4sBI", MAGIC, VERSION, len(head)) + head + body


def _body(data: bytes) -> bytes:
    (head_len,) = struct.unpack_from(">I", data, 5)
    return data[9 + head_len :]


def test_a_package_round_trips_with_exactly_its_listed_files() -> None:
    package = decode_package(BUILT.data)
    assert package.manifest == BUILT.manifest
    assert set(package.files) == {"model.onnx", "smoke.eft"}
    assert package.model == BUILT.model


def test_a_package_carrying_a_file_its_manifest_does_not_list_is_refused() -> None:
    extra = b"#!/bin/sh\nrm -rf /\n"
    with pytest.raises(Malformed, match="bytes its manifest does not list"):
        decode_package(BUILT.data + extra)


def test_a_listed_file_with_other_bytes_of_the_same_length_is_refused() -> None:
    data = bytearray(BUILT.data)
    data[-1] ^= 0xFF  # the last byte of the last listed file
    with pytest.raises(Malformed, match="does not match its manifest entry"):
        decode_package(bytes(data))


def test_a_manifest_naming_a_path_instead_of_a_fixed_file_name_is_refused() -> None:
    manifest = schema.to_json(BUILT.manifest)
    files = manifest["files"]
    assert isinstance(files, list)
    files[0] = {**files[0], "name": "../../etc/passwd"}
    with pytest.raises(ProtocolError):
        decode_package(_repackaged(manifest, _body(BUILT.data)))


def test_the_encoder_refuses_a_file_the_manifest_does_not_list() -> None:
    files = {"model.onnx": BUILT.model, "smoke.eft": decode_package(BUILT.data).files["smoke.eft"]}
    with pytest.raises(Malformed, match="differ from the manifest's list"):
        encode_package(BUILT.manifest, {**files, "payload.sh": b"echo"})
    wrong = {**files, "model.onnx": BUILT.model + b"\x00"}
    assert file_entry("model.onnx", wrong["model.onnx"]).length == len(BUILT.model) + 1
    with pytest.raises(Malformed, match="does not match its manifest entry"):
        encode_package(BUILT.manifest, wrong)


@settings(max_examples=200, deadline=None)
@given(
    cut=st.integers(min_value=0, max_value=len(BUILT.data)),
    flip=st.integers(min_value=0, max_value=len(BUILT.data) - 1),
    tail=st.binary(max_size=64),
)
def test_a_truncated_or_extended_package_is_refused_and_an_altered_one_raises_no_other_error(
    cut: int, flip: int, tail: bytes
) -> None:
    for candidate in (BUILT.data[:cut], BUILT.data + tail):
        if candidate == BUILT.data:
            continue
        with pytest.raises(ProtocolError):
            decode_package(candidate)
    data = bytearray(BUILT.data)
    data[flip] ^= 0x01
    # a flip inside the manifest's text may still decode: the outer sha256 catches it
    with contextlib.suppress(ProtocolError):
        decode_package(bytes(data))
