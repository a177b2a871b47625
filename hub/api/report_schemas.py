"""What the hub answers about what devices report: uplink records and the device twin.

Answers only (devices send these over MQTT, never over REST). Each record carries the
device's ``seq``, its own ``sent_at`` and the hub's ``received_at`` (milliseconds since
the Unix epoch); ``report`` is the message's fields as the device signed them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from hub.health import Health as DeviceHealth


class ModelRef(BaseModel):
    name: str
    version: int | None
    sha256: str | None = None


class UplinkItem(BaseModel):
    device_id: str
    seq: int
    sent_at: int = Field(description="The device's clock, ms")
    received_at: int = Field(description="The hub's clock when it stored the record, ms")


class Tensor(BaseModel):
    name: str
    dtype: str = Field(description="float32: every encoding is decoded to it")
    shape: list[int]
    values: list[Any] = Field(description="Nested lists, one level per dimension")


class Delta(UplinkItem):
    base: ModelRef = Field(description="The model version the device trained from")
    round_id: str | None
    num_samples: int
    metric: str
    before: float = Field(description="The metric on the device's holdout before training")
    after: float
    clip_norm: float
    status: str = Field(description="received | used | rejected")
    tensors_bytes: int = Field(description="Size of the tensor container as received")
    tensors: list[Tensor] | None = Field(description="Decoded, with ?include=tensors only")


class DeltaPage(BaseModel):
    items: list[Delta]
    total: int


class Window(UplinkItem):
    window_start: int
    window_end: int
    model: ModelRef | None
    report: dict[str, Any] = Field(description="The sketches and stats (DataDelta)")


class WindowPage(BaseModel):
    items: list[Window]
    total: int


class Report(UplinkItem):
    report: dict[str, Any] = Field(description="The message's fields as the device sent them")


class ReportPage(BaseModel):
    items: list[Report]
    total: int


class DesiredSide(BaseModel):
    model: ModelRef
    assignment_version: int
    set_at: int
    set_by: str
    published_at: int | None


class ReportedSide(BaseModel):
    model: ModelRef | None = Field(description="What the device reports running")
    at: int | None = Field(description="When its last state report arrived, ms")
    report: dict[str, Any] | None = Field(description="Its last state report")


class Refusal(BaseModel):
    at: int | None = Field(description="When the hub received the report, ms")
    outcome: str = Field(description="refused | failed | rolled_back")
    reason: str
    model: ModelRef | None = Field(description="The version it would not (or could not) run")


class EnrollmentRefusal(BaseModel):
    at: int | None = Field(description="When the hub last answered its hello, ms")
    reason: str = Field(description="no_token, token_expired, token_unknown, token_revoked...")


class Twin(BaseModel):
    """Desired against reported, and what stands between them."""

    device_id: str
    status: str
    health: DeviceHealth
    online: bool
    last_seen: int | None
    desired: DesiredSide | None
    reported: ReportedSide
    in_sync: bool = Field(description="The device reports running the desired version")
    last_refusal: Refusal | None = Field(
        description="The newest install the device reported refused, failed or rolled back"
    )
    enrollment_refusal: EnrollmentRefusal | None = Field(
        description="For a pending device: why its hello did not enrol it"
    )
