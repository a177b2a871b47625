"""The model registry: versions, their packages and lineage, and their release.

Registering is idempotent: the same upload (model, reference and validation bytes and the
head asked for, hashed together as ``upload_sha256`` in the lineage) under the same name
returns the version it made the first time (``created`` False) and writes nothing, so a
retried or repeated ``model register`` never mints a second version of the same bytes.

Registering a model (:meth:`Registry.register`) checks the name (a path-safe name, never
one the hub would turn into a file path unchecked), then lets
:func:`hub.registry.profile.analyze` check the model, find its head and profile it on the
reference data, all before anything is written. Then, in one write transaction: the
next version of the model and the next global release counter, the package
(:mod:`protocol.package`) stored content-addressed (:mod:`hub.registry.artifacts`), the
version with its lineage, and the next release list (:mod:`hub.registry.releases`),
signed and published when the release key is on the hub, or left pending for the
offline key (``release_pending``, not an error). Every change and every refusal is
audited.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from hub.context import HubContext
from hub.errors import InvalidRequest
from hub.registry import profile, releases
from hub.registry.artifacts import Artifacts
from hub.store import NotFound
from hub.store.rows import ModelSummary, ModelVersion
from protocol import canonical, modelcheck, schema
from protocol.documents import SignedDocument
from protocol.errors import EdgefleetError, Malformed
from protocol.manifest import ModelManifest
from protocol.metadata import Compat, ReleaseEntry, ReleaseList
from protocol.package import encode_package, file_entry

logger = logging.getLogger(__name__)

__all__ = ["ModelSummary", "Registration", "Registry", "VersionInfo"]


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
    created: bool = True
    """False: this upload was registered before, and this is the version it made."""


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


class Registry:
    """Registers models and keeps their release lists; see the module docstring.

    ``ctx.fleet`` publishes release lists (None: stored for the running hub to publish);
    ``ctx.settings.release_expiry_s`` is a drafted list's lifetime.
    """

    def __init__(
        self,
        ctx: HubContext,
        artifacts: Artifacts,
        *,
        max_model_bytes: int = modelcheck.MAX_MODEL_BYTES,
    ) -> None:
        self.ctx = ctx
        self.artifacts = artifacts
        self.max_model_bytes = max_model_bytes

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
        upload = upload_sha256(model, reference, validation, head)
        existing = self._existing(name, upload)
        if existing is not None:
            return existing
        found = profile.analyze(
            model,
            reference=reference,
            validation=validation,
            head=head,
            max_model_bytes=self.max_model_bytes,
        )
        files = {"model.onnx": found.model, "smoke.eft": found.smoke}
        store, now_ms = self.ctx.store, self.ctx.now_ms()
        with store.immediate():
            existing = self._existing(name, upload)  # the same upload, registered meanwhile
            if existing is not None:
                return existing
            version = store.registry.next_version(name)
            counter = store.registry.next_release_counter()
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
            parent = version - 1 if version > 1 else None
            lineage = {
                "parent": parent,
                "made_by": "upload",
                "by": actor,
                "metrics": found.metrics,
                "source_sha256": hashlib.sha256(model).hexdigest(),
                "upload_sha256": upload,
                "reference_rows": found.reference_rows,
                "validation_rows": found.validation_rows,
                "head": found.head.node if found.head else None,
                "head_reason": found.head_reason,
            }
            store.registry.add_version(
                ModelVersion(
                    name=name,
                    version=version,
                    sha256=sha256,
                    length=len(package),
                    release_counter=counter,
                    status="pending_release",
                    manifest=_json(schema.to_json(manifest)),
                    parent_version=parent,
                    made_by="upload",
                    lineage=_json(lineage),
                    created_at=now_ms,
                    created_by=actor,
                )
            )
            entry = ReleaseEntry(name, version, counter, sha256, len(package), _compat(manifest))
            release_version, signed = releases.draft_release(
                self.ctx, entry, now_ms=now_ms, actor=actor
            )
            store.audit.append(
                at=now_ms,
                actor=actor,
                action="model.register",
                target=f"{name}/{version}",
                detail={"sha256": sha256, "counter": counter},
            )
        logger.info("registered %s v%d (counter %d, %s)", name, version, counter, sha256[:16])
        if signed:
            releases.publish(self.ctx)
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

    def _existing(self, name: str, upload: str) -> Registration | None:
        """What registering ``upload`` as ``name`` made before, if it did."""
        store = self.ctx.store
        row = store.registry.find_upload(name, upload)
        if row is None:
            return None
        info = _version(row)
        latest = store.registry.latest_release_list()
        return Registration(
            name=info.name,
            version=info.version,
            release_counter=info.release_counter,
            sha256=info.sha256,
            length=info.length,
            manifest=info.manifest,
            release_version=latest.version if latest is not None else 0,
            release_pending=info.status == "pending_release",
            head_reason=info.lineage.get("head_reason"),
            metrics=dict(info.lineage.get("metrics", {})),
            created=False,
        )

    # ------------------------------------------------------------------ release lists

    def pending_release(self) -> SignedDocument | None:
        """The newest unsigned release list, if it is newer than the newest signed one."""
        return releases.pending_release(self.ctx)

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
            release = releases.accept_release(self.ctx, doc, actor=actor)
        except EdgefleetError as e:
            self._audit(actor, "release.publish", "", e)
            raise
        releases.publish(self.ctx)
        return release

    # ------------------------------------------------------------------ reading

    def list_models(self) -> list[ModelSummary]:
        """Every model, by name, with its version counts."""
        return self.ctx.store.registry.models()

    def list_versions(self, name: str) -> list[VersionInfo]:
        """Every version of ``name``, oldest first.

        Raises:
            NotFound: no such model.
        """
        if not self.ctx.store.registry.has_model(name):
            raise NotFound(f"no model {name[:64]!r}")
        return [_version(v) for v in self.ctx.store.registry.versions(name)]

    def get_version(self, name: str, version: int) -> VersionInfo:
        """Raises NotFound: no such version."""
        found = self.ctx.store.registry.version(name, version)
        if found is None:
            raise NotFound(f"no version {version} of model {name[:64]!r}")
        return _version(found)

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
        self.ctx.store.audit.append(
            at=self.ctx.now_ms(),
            actor=actor,
            action=action,
            target=target,
            outcome="rejected",
            reason=error.reason,
            detail={"error": str(error)[:300]},
        )


def upload_sha256(
    model: bytes, reference: bytes, validation: bytes | None, head: str | None
) -> str:
    """One digest of everything a registration is made from (each part length-prefixed,
    so no two different uploads share it)."""
    digest = hashlib.sha256(b"edgefleet-upload-v1")
    for part in (model, reference, validation or b"", (head or "").encode()):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


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


def _version(row: ModelVersion) -> VersionInfo:
    return VersionInfo(
        name=row.name,
        version=row.version,
        sha256=row.sha256,
        length=row.length,
        release_counter=row.release_counter,
        status=row.status,
        parent_version=row.parent_version,
        made_by=row.made_by,
        created_at=row.created_at,
        created_by=row.created_by,
        lineage=json.loads(row.lineage),
        manifest=schema.from_json(ModelManifest, canonical.loads(row.manifest.encode())),
    )


def _json(value: Any) -> str:
    return canonical.dumps(value).decode()
