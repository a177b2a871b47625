"""The one ``Migrations`` book every migration module registers on, in the order they are
imported (:mod:`hub.store.migrations`)."""

from __future__ import annotations

from sqlite_utils import Migrations

migrations = Migrations("edgefleet.hub")
