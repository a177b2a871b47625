"""MQTT 3.1.1 packets as values: the codec's round-trip laws, and bad bytes refused as
PacketError, never another exception."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.transport.mqtt_packets import (
    Connect,
    PacketError,
    Publish,
    encode_connect,
    encode_publish,
    next_packet,
    parse_connect,
    parse_publish,
    read_remaining_length,
    remaining_length,
    split,
)

texts = st.text(max_size=40).filter(lambda t: "\x00" not in t)
publishes = st.one_of(
    st.builds(Publish, topic=texts, payload=st.binary(max_size=300), retain=st.booleans()),
    st.builds(
        Publish,
        topic=texts,
        payload=st.binary(max_size=300),
        qos=st.sampled_from([1, 2]),
        retain=st.booleans(),
        dup=st.booleans(),
        packet_id=st.integers(1, 0xFFFF),
    ),
)


@st.composite
def connects(draw: st.DrawFn) -> Connect:
    will = draw(st.booleans())
    username = draw(st.none() | texts)
    return Connect(
        client_id=draw(texts),
        clean_session=draw(st.booleans()),
        keepalive_s=draw(st.integers(0, 0xFFFF)),
        username=username,
        password=None if username is None else draw(st.none() | st.binary(max_size=50)),
        will_topic=draw(texts) if will else None,
        will_payload=draw(st.binary(max_size=100)) if will else b"",
        will_qos=draw(st.integers(0, 2)) if will else 0,
        will_retain=draw(st.booleans()) if will else False,
    )


@given(publishes)
def test_parse_publish_inverts_encode_publish(p: Publish) -> None:
    assert parse_publish(*split(encode_publish(p))) == p


@given(connects())
def test_parse_connect_inverts_encode_connect(c: Connect) -> None:
    assert parse_connect(split(encode_connect(c))[1]) == c


@given(st.integers(0, 268_435_455))
def test_remaining_length_round_trips(n: int) -> None:
    assert read_remaining_length(b"\x30" + remaining_length(n)) == (n, 1 + len(remaining_length(n)))


@given(publishes, st.integers(0, 400))
def test_next_packet_waits_for_a_whole_packet(p: Publish, cut: int) -> None:
    data = encode_publish(p)
    assert next_packet(data[:cut]) == (len(data) if cut >= len(data) else None)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_packet_error(data: bytes) -> None:
    for parse in (
        lambda: parse_connect(data),
        lambda: parse_publish(0x32, data),
        lambda: split(data),
    ):
        with contextlib.suppress(PacketError):
            parse()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(encode_connect(Connect("c"))[2:].replace(b"MQTT", b"MQIs"), id="not-mqtt"),
        pytest.param(encode_connect(Connect("c"))[2:-1], id="truncated"),
        pytest.param(encode_connect(Connect("c"))[2:] + b"x", id="trailing"),
        pytest.param(b"\x00\x04MQTT\x04\x40\x00\x3c\x00\x01c\x00\x01p", id="password-no-user"),
        pytest.param(b"\x00\x04MQTT\x04\x03\x00\x3c\x00\x01c", id="reserved-flag"),
        pytest.param(b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x02\xff\xfe", id="not-utf8"),
    ],
)
def test_bad_connects_are_refused(body: bytes) -> None:
    with pytest.raises(PacketError):
        parse_connect(body)


def test_five_length_bytes_are_refused() -> None:
    with pytest.raises(PacketError):
        read_remaining_length(b"\x30\xff\xff\xff\xff\x01")
