"""The model registry: versions, their packages, lineage and the signed release list.

Registering a model (:meth:`Registry.register`) checks the name (THREATS T17), then lets
:func:`hub.registry.profile.analyze` check the model, find its head and profile it on the
reference data, all before anything is written. Then, in one write transaction: the
next version of the model and the next global release counter, the package
(:mod:`protocol.package`) stored content-addressed (:mod:`hub.registry.artifacts`), the
``versions`` row with its lineage, and the next release list, which is signed and
published when the release key is on the hub, or left pending for the offline key
(``release_pending``, not an error).

**Release lists** are append-mostly: list N+1 holds the entries of list N (signed or
pending) plus the new one, and its rollback floor (``min_counter``, which only the
release role may raise, docs/decisions.md), keeping every entry of the last
:data:`KEEP_VERSIONS` versions per model, so that operators can still assign an older
version (a rollback) without a new release; past :data:`~protocol.metadata.MAX_ENTRIES`
the lowest release counters go. An offline-signed list comes back through
:meth:`Registry.publish_release_list`, which verifies it against the root's release
role, refuses one not newer than the published one or lowering its floor, and checks
every entry against the registered versions.

Publishing: ``publish_fleet(kind, payload)`` publishes retained on ``fleet/<kind>``.
When it is ``None`` (the CLI without a broker) or fails, the signed list is stored and
the running hub publishes it (:func:`hub.fleet.documents.publish_release`, called by the
reconciler and on every reconnect). Every change and every refusal is audited.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgefleet.clock import Clock
from hub.errors import Conflict, InvalidRequest
from hub.fleet.documents import FleetPublisher, publish_release, signed_release
from hub.keyring import Keyring, KeyringError
from hub.registry import profile
from hub.registry.artifacts import ArtifactStore
from hub.store.database import NotFound, Row, Store
from protocol import canonical, metadata, modelcheck, schema
from protocol.documents import SignedDocument, verify_threshold
from protocol.errors import EdgefleetError, Malformed
from protocol.manifest import ModelManifest
from protocol.metadata import Compat, ReleaseEntry, ReleaseList
from protocol.package import encode_package, file_entry

logger = logging.getLogger(__name__)

KEEP_VERSIONS = 20


@dataclass(frozen=True)
class Registration:
    """What :meth:`Registry.register` created."""

    name: str
    version: int
    release_counter: int
    sha256: str
    length: int
    manifest: ModelManifest
    release_version: int
    release_pending: bool
    head_reason: str | None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionInfo:
    """One registered version, as listings and the REST layer show it."""

    name: str
    version: int
    sha256: str
    length: int
    release_counter: int
    status: str  # pending_release | released | withdrawn
    parent_version: int | None
    made_by: str
    created_at: int
    created_by: str
    lineage: dict[str, Any]
    manifest: ModelManifest


@dataclass(frozen=True)
class ModelSummary:
    """One model in a listing: how many versions, the newest, the newest released."""

    name: str
    created_at: int
    created_by: str
    versions: int
    latest_version: int | None
    latest_released: int | None


class Registry:
    """Registers models and keeps the release list; see the module docstring."""

    def __init__(
        self,
        store: Store,
        artifacts: ArtifactStore,
        keyring: Keyring,
        clock: Clock,
        publish_fleet: FleetPublisher | None = None,
        *,
        release_expiry_s: float = 90 * 24 * 3600.0,
        max_model_bytes: int = modelcheck.MAX_MODEL_BYTES,
        on_released: Callable[[], object] | None = None,
    ) -> None:
        """``on_released`` runs after a release list reached the broker: the hub issues a
        heartbeat pinning it then, since devices install nothing from a release list no
        fresh heartbeat vouches for (THREATS T3)."""
        self.store = store
        self.artifacts = artifacts
        self.keyring = keyring
        self.clock = clock
        self.publish_fleet = publish_fleet
        self.release_expiry_ms = int(release_expiry_s * 1000)
        self.max_model_bytes = max_model_bytes
        self.on_released = on_released

    # ------------------------------------------------------------------ registration

    def register(
        self,
        model: bytes,
        *,
        name: str,
        reference: bytes,
        validation: bytes | None = None,
        head: str | None = None,
        actor: str,
    ) -> Registration:
        """Register ``model`` as the next version of ``name``; see the module docstring.

        Raises:
            InvalidRequest: a bad name, unusable reference or validation data, a model
                the data does not fit, or no supported head at the node ``head`` names.
            Oversize: a model larger than ``max_model_bytes``.
            UnsafeModel, Incompatible: :func:`protocol.modelcheck.inspect_model` refuses
                the model (external data, custom operators, an unsupported opset...).
            ShapeMismatch: the head cannot be exposed as an output.
        """
        try:
            return self._register(model, name, reference, validation, head, actor)
        except EdgefleetError as e:
            self._audit(actor, "model.register", name[:64], e)
            raise

    def _register(
        self,
        model: bytes,
        name: str,
        reference: bytes,
        validation: bytes | None,
        head: str | None,
        actor: str,
    ) -> Registration:
        _check_name(name)
        found = profile.analyze(
            model,
            reference=reference,
            validation=validation,
            head=head,
            max_model_bytes=self.max_model_bytes,
        )
        files = {"model.onnx": found.model, "smoke.eft": found.smoke}
        now = self.clock.now_ms()
        with self.store.immediate():
            version = self.store.next_model_version(name)
            counter = self.store.next_release_counter()
            manifest = ModelManifest(
                name=name,
                version=version,
                opset=found.info.opset,
                inputs=found.info.inputs,
                outputs=found.info.outputs,
                scores=found.scores,
                files=tuple(file_entry(n, data) for n, data in files.items()),
                head=found.head,
                profile=found.profile,
                latency_budget_ms=found.latency_budget_ms,
            )
            package = encode_package(manifest, files)
            sha256 = self.artifacts.put(package)
            lineage = {
                "parent": version - 1 if version > 1 else None,
                "made_by": "upload",
                "by": actor,
                "metrics": found.metrics,
                "source_sha256": hashlib.sha256(model).hexdigest(),
                "reference_rows": found.reference_rows,
                "validation_rows": found.validation_rows,
                "head": found.head.node if found.head else None,
                "head_reason": found.head_reason,
            }
            self._insert_rows(manifest, package, sha256, counter, lineage, now, actor)
            entry = ReleaseEntry(name, version, counter, sha256, len(package), _compat(manifest))
            release_version, signed = self._draft_release(entry, now, actor)
            self.store.audit(
                at=now,
                actor=actor,
                action="model.register",
                target=f"{name}/{version}",
                detail=_json({"sha256": sha256, "counter": counter}),
            )
        logger.info("registered %s v%d (counter %d, %s)", name, version, counter, sha256[:16])
        if signed:
            self._publish()
        return Registration(
            name=name,
            version=version,
            release_counter=counter,
            sha256=sha256,
            length=len(package),
            manifest=manifest,
            release_version=release_version,
            release_pending=not signed,
            head_reason=found.head_reason,
            metrics=found.metrics,
        )

    def _insert_rows(
        self,
        manifest: ModelManifest,
        package: bytes,
        sha256: str,
        counter: int,
        lineage: dict[str, Any],
        now: int,
        actor: str,
    ) -> None:
        """The artifact, model and version rows of a new version."""
        name = manifest.name
        if self.store.find("artifacts", sha256) is None:
            self.store.insert(
                "artifacts",
                {"sha256": sha256, "length": len(package), "kind": "package", "created_at": now},
            )
        if self.store.find("models", name) is None:
            self.store.insert(
                "models", {"name": name, "created_at": now, "created_by": actor, "description": ""}
            )
        self.store.insert(
            "versions",
            {
                "name": name,
                "version": manifest.version,
                "sha256": sha256,
                "length": len(package),
                "release_counter": counter,
                "status": "pending_release",
                "manifest": _json(schema.to_json(manifest)),
                "parent_version": lineage["parent"],
                "made_by": lineage["made_by"],
                "lineage": _json(lineage),
                "created_at": now,
                "created_by": actor,
            },
        )

    # ------------------------------------------------------------------ release lists

    def _draft_release(self, entry: ReleaseEntry, now: int, actor: str) -> tuple[int, bool]:
        """Store release list N+1 (previous entries + ``entry``), signed if the key is here."""
        previous = self.store.latest_release_list()
        entries: list[ReleaseEntry] = [entry]
        version, floor = 1, 0
        if previous is not None:
            last = metadata.parse(
                ReleaseList, SignedDocument.from_bytes(previous["document"].encode())
            )
            entries = [*last.entries, entry]
            version, floor = last.version + 1, last.min_counter
        release = ReleaseList(version, now + self.release_expiry_ms, _kept(entries), floor)
        try:
            signers = self.keyring.signing_keys("release")
        except KeyringError:
            signers = ()
        doc = metadata.sign(release, signers)
        self.store.insert(
            "release_lists",
            {
                "version": version,
                "document": doc.to_bytes().decode(),
                "signed": int(bool(signers)),
                "created_at": now,
                "created_by": actor,
            },
        )
        if signers:
            self._mark_released(release)
        else:
            logger.info("release list v%d is pending: the release key is offline", version)
        return version, bool(signers)

    def _mark_released(self, release: ReleaseList) -> None:
        """Versions the newly signed list names are released. Versions it leaves out that
        are older (lower counter) than its newest entry are withdrawn: the release officer
        dropped them, or they fell past :data:`KEEP_VERSIONS`; later drafts omit them too.
        """
        listed = {(e.name, e.version) for e in release.entries}
        newest = max((e.release_counter for e in release.entries), default=0)
        rows = self.store.query(
            "SELECT name, version FROM versions "
            "WHERE status != 'withdrawn' AND release_counter < ?",
            [newest],
        )
        for row in rows:
            if (row["name"], row["version"]) not in listed:
                self.store.update(
                    "versions", (row["name"], row["version"]), {"status": "withdrawn"}
                )
        for name, version in listed:
            self.store.update("versions", (name, version), {"status": "released"})

    def pending_release(self) -> SignedDocument | None:
        """The newest unsigned release list, if it is newer than the newest signed one."""
        pending = self.store.latest_release_list(signed=False)
        signed = self.store.latest_release_list(signed=True)
        if pending is None or (signed is not None and signed["version"] > pending["version"]):
            return None
        return SignedDocument.from_bytes(pending["document"].encode())

    def publish_release_list(self, doc: SignedDocument, *, actor: str) -> ReleaseList:
        """Accept a release list signed offline, mark its versions released, publish it.

        Raises:
            WrongKind, Malformed: not a release list document.
            ThresholdNotMet: not signed by a threshold of the root's release keys.
            Conflict: expired, not newer than the published list, lowering its rollback
                floor, or naming a version the registry does not hold with exactly those
                bytes and counter.
        """
        try:
            release = self._accept(doc, actor)
        except EdgefleetError as e:
            self._audit(actor, "release.publish", "", e)
            raise
        self._publish()
        return release

    def _accept(self, doc: SignedDocument, actor: str) -> ReleaseList:
        release = metadata.parse(ReleaseList, doc)
        root = self.keyring.root
        verify_threshold(doc, "release", root.role_keys("release"), root.threshold("release"))
        now = self.clock.now_ms()
        if now >= release.expires:
            raise Conflict(f"release list v{release.version} has expired: draft a new one")
        with self.store.immediate():
            current = signed_release(self.store)
            if current is not None and release.version <= current[1].version:
                raise Conflict(
                    f"release list v{release.version} is not newer than the published "
                    f"v{current[1].version}"
                )
            if current is not None and release.min_counter < current[1].min_counter:
                raise Conflict(
                    f"release list v{release.version} lowers the rollback floor to "
                    f"{release.min_counter} (published: {current[1].min_counter})"
                )
            for e in release.entries:
                row = self.store.find("versions", (e.name, e.version)) or {}
                held = (row.get("sha256"), row.get("length"), row.get("release_counter"))
                if (
                    held != (e.sha256, e.length, e.release_counter)
                    or row.get("status") == "withdrawn"
                ):
                    raise Conflict(f"release list names {e.name} v{e.version}, not held as signed")
            self.store.upsert(
                "release_lists",
                {
                    "version": release.version,
                    "document": doc.to_bytes().decode(),
                    "signed": 1,
                    "created_at": now,
                    "created_by": actor,
                },
                pk="version",
            )
            self._mark_released(release)
            self.store.audit(
                at=now, actor=actor, action="release.publish", target=f"v{release.version}"
            )
        return release

    def _publish(self) -> None:
        if self.publish_fleet is not None and publish_release(self.store, self.publish_fleet):
            if self.on_released is not None:
                self.on_released()
            return
        logger.info("release list stored; the hub publishes it when the broker is reachable")

    # ------------------------------------------------------------------ reading

    def list_models(self) -> list[ModelSummary]:
        """Every model, by name, with its version counts."""
        rows = self.store.query(
            "SELECT m.name, m.created_at, m.created_by, count(v.version) AS versions, "
            "max(v.version) AS latest_version, "
            "max(CASE WHEN v.status = 'released' THEN v.version END) AS latest_released "
            "FROM models m LEFT JOIN versions v ON v.name = m.name GROUP BY m.name ORDER BY m.name"
        )
        return [ModelSummary(**row) for row in rows]

    def list_versions(self, name: str) -> list[VersionInfo]:
        """Every version of ``name``, oldest first.

        Raises:
            NotFound: no such model.
        """
        if self.store.find("models", name) is None:
            raise NotFound(f"no model {name[:64]!r}")
        rows = self.store.query("SELECT * FROM versions WHERE name = ? ORDER BY version", [name])
        return [_version(r) for r in rows]

    def get_version(self, name: str, version: int) -> VersionInfo:
        """Raises NotFound: no such version."""
        row = self.store.find("versions", (name, version))
        if row is None:
            raise NotFound(f"no version {version} of model {name[:64]!r}")
        return _version(row)

    def lineage(self, name: str, version: int) -> tuple[VersionInfo, ...]:
        """``version`` and its ancestors, newest first.

        Raises:
            NotFound: no such version.
        """
        chain = [self.get_version(name, version)]
        while chain[-1].parent_version is not None and len(chain) < 10_000:
            chain.append(self.get_version(name, chain[-1].parent_version))
        return tuple(chain)

    def download(self, name: str, version: int) -> bytes:
        """The version's package bytes, checked against their digest.

        Raises:
            NotFound: no such version or artifact.
            ArtifactCorrupt: the stored bytes no longer match.
        """
        return self.artifacts.read(self.get_version(name, version).sha256)

    def _audit(self, actor: str, action: str, target: str, error: EdgefleetError) -> None:
        self.store.audit(
            at=self.clock.now_ms(),
            actor=actor,
            action=action,
            target=target,
            outcome="rejected",
            reason=error.reason,
            detail=_json({"error": str(error)[:300]}),
        )


def _check_name(name: str) -> None:
    try:
        schema.check_name(name, "model name")
    except Malformed as e:
        raise InvalidRequest(str(e)) from e


def _compat(manifest: ModelManifest) -> Compat:
    try:
        return Compat(opset=manifest.opset, io_signature=manifest.io_signature())
    except Malformed as e:
        raise InvalidRequest(f"the model's I/O cannot be released: {e}") from e


def _kept(entries: list[ReleaseEntry]) -> tuple[ReleaseEntry, ...]:
    newest: dict[str, list[int]] = {}
    for e in entries:
        newest.setdefault(e.name, []).append(e.version)
    cut = {n: sorted(v)[-KEEP_VERSIONS:] for n, v in newest.items()}
    kept = sorted((e for e in entries if e.version in cut[e.name]), key=lambda e: e.release_counter)
    return tuple(kept[-metadata.MAX_ENTRIES :])


def _version(row: Row) -> VersionInfo:
    return VersionInfo(
        name=row["name"],
        version=row["version"],
        sha256=row["sha256"],
        length=row["length"],
        release_counter=row["release_counter"],
        status=row["status"],
        parent_version=row["parent_version"],
        made_by=row["made_by"],
        created_at=row["created_at"],
        created_by=row["created_by"],
        lineage=json.loads(row["lineage"]),
        manifest=schema.from_json(ModelManifest, canonical.loads(row["manifest"].encode())),
    )


def _json(value: Any) -> str:
    return canonical.dumps(value).decode()
