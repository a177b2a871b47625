"""edgefleet's wire protocol: pure values, bytes in and bytes out.

No sockets, files, clocks or randomness: time, nonces and keys are arguments. ``agent``
and ``hub`` import this package and never each other.
"""

from protocol import messages as messages
from protocol.errors import EdgefleetError, ProtocolError
from protocol.frame import Envelope, Header, Limits, decode, encode, open_frame
from protocol.topics import Topics

__all__ = [
    "EdgefleetError",
    "Envelope",
    "Header",
    "Limits",
    "ProtocolError",
    "Topics",
    "decode",
    "encode",
    "messages",
    "open_frame",
]
