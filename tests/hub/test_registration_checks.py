"""Registration refuses validation data it cannot use, and registering the same upload
twice is one version (issue 8: defects a new user hit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hub.errors import InvalidRequest
from tests import models
from tests.clock import FakeClock
from tests.hub.tables import snapshot
from tests.hub.test_registry import TABLES, Hub, make_hub, npz, reference


@pytest.fixture
def hub(tmp_path: Path, clock: FakeClock) -> Hub:
    return make_hub(tmp_path, clock)


def _x(rows: int = 60, features: int = 4, seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, features)).astype(np.float32)


BAD_VALIDATION: list[Any] = [
    pytest.param(npz(X=_x()), "no labels", id="labels-missing"),
    pytest.param(
        npz(X=_x(features=5), y=np.zeros(60)), "5 features; the reference has 4", id="features"
    ),
    pytest.param(npz(X=_x(), y=np.full(60, 3)), "class 3", id="label-past-the-classes"),
    pytest.param(npz(X=_x(), y=np.full(60, -1)), "class indices", id="negative-label"),
    pytest.param(npz(X=_x(), y=np.full(60, 0.5)), "class indices", id="fractional-label"),
]


@pytest.mark.parametrize(("validation", "message"), BAD_VALIDATION)
def test_register_refuses_validation_data_it_cannot_score(
    hub: Hub, validation: bytes, message: str
) -> None:
    before = snapshot(hub.store, TABLES)
    with pytest.raises(InvalidRequest, match=message):
        hub.register(validation=validation)
    assert snapshot(hub.store, TABLES) == before


def test_registering_the_same_upload_again_returns_the_existing_version(hub: Hub) -> None:
    first = hub.register(validation=npz(X=_x(), y=np.zeros(60)))
    before = snapshot(hub.store, TABLES)
    again = hub.register(validation=npz(X=_x(), y=np.zeros(60)))
    assert (again.version, again.sha256, again.created) == (first.version, first.sha256, False)
    assert first.created is True
    assert snapshot(hub.store, TABLES) == before


def test_other_bytes_make_a_new_version(hub: Hub) -> None:
    assert hub.register().version == 1
    assert hub.register(reference=reference(seed=9)).version == 2
    assert hub.register(models.gemm_classifier(hidden=7)).version == 3
    assert hub.register(name="other").version == 1
