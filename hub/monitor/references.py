"""A scope's reference, baseline accuracy and policy, read from the registry and the store.

A model version's manifest never changes once registered, so its :class:`Reference`
is cached for the life of the reader (one per ingest worker, one per job run); a
policy can change at any time, so it is read where it is used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from hub.drift.errors import UnusableReference
from hub.drift.policy import DriftPolicy
from hub.drift.reference import Reference
from hub.monitor import codec
from hub.store import Store
from hub.store.interface import NotFound
from protocol import canonical, schema
from protocol.errors import EdgefleetError
from protocol.manifest import ModelManifest


@dataclass(frozen=True)
class Baseline:
    """What a model version compares its windows with."""

    reference: Reference
    accuracy: float | None


class References:
    """Baselines by ``(model, version)``, cached (module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache: dict[tuple[str, int], Baseline | UnusableReference] = {}

    def of(self, name: str, version: int) -> Baseline:
        """Raises:
        NotFound: no such version.
        UnusableReference: its manifest has no drift profile the tests can use.
        """
        key = (name, version)
        if key not in self._cache:
            self._cache[key] = self._load(name, version)
        found = self._cache[key]
        if isinstance(found, UnusableReference):
            raise found
        return found

    def put(self, name: str, version: int, baseline: Baseline) -> None:
        """Use ``baseline`` for that version without reading the registry (a caller that
        already holds it: the drift benchmark, which registers no model)."""
        self._cache[(name, version)] = baseline

    def _load(self, name: str, version: int) -> Baseline | UnusableReference:
        row = self.store.registry.version(name, version)
        if row is None:
            raise NotFound(f"no version {version} of model {name[:64]!r}")
        manifest = schema.from_json(ModelManifest, canonical.loads(row.manifest.encode()))
        if manifest.profile is None:
            return UnusableReference(f"{name[:64]} v{version} has no drift profile")
        try:
            reference = Reference.from_profile(manifest.profile)
        except UnusableReference as e:
            return e
        accuracy = json.loads(row.lineage).get("metrics", {}).get("accuracy")
        return Baseline(reference, float(accuracy) if isinstance(accuracy, int | float) else None)


def policy(store: Store, model_name: str) -> DriftPolicy:
    """The model's policy (the defaults until one is set); a stored policy that no longer
    decodes (an older field set) falls back to the defaults rather than stop scoring."""
    body = store.drift.policy(model_name)
    if body is None:
        return DriftPolicy()
    try:
        return codec.loads(DriftPolicy, body)
    except EdgefleetError:
        return DriftPolicy()
