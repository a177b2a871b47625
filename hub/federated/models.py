"""What the rounds layer reads about one model: its policy, base versions, validation set.

A model without a stored policy runs the defaults (:class:`hub.rounds.policy.ModelPolicy`:
rounds, the ``default`` strategy, norm bound 10, no auto-release), so rounds work on any
registered model with a head. The validation set is the hub's own labelled data
(``.npz`` with ``X`` and ``y``, the format registration takes): candidates are judged on
it, never on what devices say about themselves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from hub.errors import Conflict, InvalidRequest
from hub.registry.datasets import load_dataset
from hub.rounds.layout import Layout
from hub.rounds.policy import ModelPolicy
from hub.rounds.screening import BaseVersion
from hub.store import NotFound, Store
from hub.store.rows import ModelVersion
from protocol import canonical, schema
from protocol.errors import ProtocolError
from protocol.manifest import Head, ModelManifest


def policy_of(store: Store, model: str) -> ModelPolicy:
    """The model's stored policy, or the defaults."""
    stored = store.rounds.policy(model)
    if stored is None:
        return ModelPolicy()
    return ModelPolicy.from_json(json.loads(stored))


def manifest_of(row: ModelVersion) -> ModelManifest:
    return schema.from_json(ModelManifest, canonical.loads(row.manifest.encode()))


def head_of(row: ModelVersion) -> Head:
    """Raises Conflict: the version has no trainable head (nothing to federate)."""
    head = manifest_of(row).head
    if head is None:
        raise Conflict(f"{row.name} v{row.version} has no trainable head")
    return head


def base_version(store: Store, name: str, version: int, max_norm: float) -> BaseVersion | None:
    """The registry's row as screening wants it; None when unknown or head-less."""
    row = store.registry.version(name, version)
    if row is None:
        return None
    try:
        head = manifest_of(row).head
    except ProtocolError:
        return None
    if head is None:
        return None
    return BaseVersion(
        name, version, row.sha256, row.status == "released", Layout.of_head(head), max_norm, head
    )


def latest_released(store: Store, name: str) -> ModelVersion:
    """Raises NotFound: the model has no released version."""
    released = [v for v in store.registry.versions(name) if v.status == "released"]
    if not released:
        raise NotFound(f"model {name[:64]!r} has no released version")
    return released[-1]


@dataclass(frozen=True)
class ValidationSet:
    x: np.ndarray
    y: np.ndarray


def validation_set(store: Store, model: str) -> ValidationSet | None:
    data = store.rounds.validation_set(model)
    if data is None:
        return None
    dataset = load_dataset(data, what="validation")
    assert dataset.y is not None  # checked when stored
    return ValidationSet(dataset.x, dataset.y)


def check_validation_set(data: bytes) -> int:
    """The rows of an uploaded validation set.

    Raises:
        InvalidRequest: not an ``.npz`` with ``X`` and ``y`` of as many rows.
    """
    dataset = load_dataset(data, what="validation")
    if dataset.y is None:
        raise InvalidRequest("the validation set needs labels: an array y beside X")
    return len(dataset.x)
