"""Models, versions, release lists and artifacts.

``POST /api/v1/models`` registers the next version of a model from a multipart upload:
``model`` (ONNX, at most 64 MiB), ``name``, ``reference`` (``.npz`` with ``X``, at most
64 MiB: the drift profile, smoke inputs and latency budget), optional ``validation``
(``.npz`` with ``X`` and ``y``: the metrics) and optional ``head`` (the node to retrain);
:meth:`hub.registry.registry.Registry.register` checks all of it before writing anything. The new
version is released at once when the release key is on the hub; otherwise its release
list waits for the offline key and comes back through ``POST /api/v1/releases``.

Downloads are ``application/octet-stream``. ``GET /api/v1/artifacts/{sha256}`` serves
released packages only (:func:`hub.fleet.delivery.http_artifact`) and honours one
``Range: bytes=first-last`` (at most 1 MiB per answer), for resumable downloads. The
digest in the path is 64 lowercase hex digits or the request is refused before anything
looks at the disk (no name a caller sends ever becomes a path).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, File, Form, Header, Path, Response, UploadFile

from hub.api.deps import (
    GuardedRoute,
    LimitQuery,
    OffsetQuery,
    OperatorDep,
    ServicesDep,
    StoreDep,
    UploadRoute,
    ViewerDep,
)
from hub.api.errors import problem, problem_responses
from hub.api.schemas import (
    MAX_VERSION,
    NAME_PATTERN,
    SHA256_PATTERN,
    ModelPage,
    ModelSummary,
    ModelVersion,
    Registered,
    ReleaseListDocument,
    ReleaseListIn,
    ReleasePublished,
    VersionPage,
)
from hub.errors import InvalidRequest
from hub.fleet.delivery import http_artifact
from hub.registry.artifacts import MAX_RANGE_BYTES
from hub.registry.registry import VersionInfo
from hub.store import NotFound
from protocol import canonical, schema
from protocol.documents import SignedDocument
from protocol.errors import Oversize

router = APIRouter(route_class=GuardedRoute)
uploads = APIRouter(route_class=UploadRoute)

MAX_MODEL_BYTES = 64 * 1024 * 1024
MAX_DATA_BYTES = 64 * 1024 * 1024
MAX_HEAD_CHARS = 256
OCTET_STREAM = "application/octet-stream"
_BINARY = {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}}
_RANGE = re.compile(r"bytes=(\d{1,15})-(\d{0,15})")

ModelName = Annotated[str, Path(pattern=NAME_PATTERN, description="The model's name")]
VersionNumber = Annotated[int, Path(ge=1, le=MAX_VERSION, description="The version number")]


class OctetStreamResponse(Response):
    media_type = OCTET_STREAM


@uploads.post(
    "/models",
    name="model.register",
    summary="Register the next version of a model (multipart: model, name, reference...)",
    tags=["models"],
    status_code=201,
    response_model=Registered,
    responses={
        200: {"description": "This upload was registered before: the version it made"},
        **problem_responses(409),
    },
)
def register_model(
    response: Response,
    model: Annotated[UploadFile, File(description="The ONNX model, at most 64 MiB")],
    name: Annotated[str, Form(pattern=NAME_PATTERN)],
    reference: Annotated[UploadFile, File(description=".npz with X, at most 64 MiB")],
    operator: OperatorDep,
    services: ServicesDep,
    validation: Annotated[
        UploadFile | None, File(description=".npz with X and y, at most 64 MiB")
    ] = None,
    head: Annotated[
        str | None, Form(min_length=1, max_length=MAX_HEAD_CHARS, description="Head node name")
    ] = None,
) -> Registered:
    """Everything is checked before anything is written; see ``hub.registry.registry``.
    The same upload again answers 200 with the version it made the first time.
    \f
    Raises:
        Oversize: a file over its cap (413).
        InvalidRequest, UnsafeModel, Incompatible, ShapeMismatch: from
            :meth:`hub.registry.registry.Registry.register`, which audits them.
    """
    registration = services.registry.register(
        _read(model.file, MAX_MODEL_BYTES, "model"),
        name=name,
        reference=_read(reference.file, MAX_DATA_BYTES, "reference"),
        validation=_read(validation.file, MAX_DATA_BYTES, "validation") if validation else None,
        head=head,
        actor=operator.actor,
    )
    if not registration.created:
        response.status_code = 200
    return Registered(
        name=registration.name,
        version=registration.version,
        release_counter=registration.release_counter,
        sha256=registration.sha256,
        length=registration.length,
        release_version=registration.release_version,
        release_pending=registration.release_pending,
        head_reason=registration.head_reason,
        metrics=registration.metrics,
        created=registration.created,
    )


@router.get(
    "/models",
    name="model.list",
    summary="List models with their latest and latest released versions",
    tags=["models"],
    response_model=ModelPage,
)
def list_models(
    _: ViewerDep, services: ServicesDep, limit: LimitQuery = 100, offset: OffsetQuery = 0
) -> ModelPage:
    models = services.registry.list_models()
    items = [ModelSummary(**asdict(m)) for m in models[offset : offset + limit]]
    return ModelPage(items=items, total=len(models))


@router.get(
    "/models/{name}/versions",
    name="version.list",
    summary="List a model's versions, oldest first",
    tags=["models"],
    response_model=VersionPage,
    responses=problem_responses(404),
)
def list_versions(
    name: ModelName,
    _: ViewerDep,
    services: ServicesDep,
    limit: LimitQuery = 100,
    offset: OffsetQuery = 0,
) -> VersionPage:
    versions = services.registry.list_versions(name)
    items = [_version(v) for v in versions[offset : offset + limit]]
    return VersionPage(items=items, total=len(versions))


@router.get(
    "/models/{name}/versions/{version}",
    name="version.get",
    summary="Read one version: digest, release state, manifest and lineage",
    tags=["models"],
    response_model=ModelVersion,
    responses=problem_responses(404),
)
def get_version(
    name: ModelName, version: VersionNumber, _: ViewerDep, services: ServicesDep
) -> ModelVersion:
    return _version(services.registry.get_version(name, version))


@router.get(
    "/models/{name}/versions/{version}/lineage",
    name="version.lineage",
    summary="A version and its ancestors, newest first",
    tags=["models"],
    response_model=VersionPage,
    responses=problem_responses(404),
)
def get_lineage(
    name: ModelName, version: VersionNumber, _: ViewerDep, services: ServicesDep
) -> VersionPage:
    chain = services.registry.lineage(name, version)
    return VersionPage(items=[_version(v) for v in chain], total=len(chain))


@router.get(
    "/models/{name}/versions/{version}/download",
    name="version.download",
    summary="Download a version's package (manifest and files, one artifact)",
    tags=["models"],
    response_class=OctetStreamResponse,
    responses={200: {"content": _BINARY}, **problem_responses(404)},
)
def download_version(
    name: ModelName, version: VersionNumber, _: ViewerDep, services: ServicesDep
) -> Response:
    data = services.registry.download(name, version)
    disposition = f'attachment; filename="{name}-{version}.efpk"'
    return OctetStreamResponse(data, headers={"Content-Disposition": disposition})


@router.post(
    "/releases",
    name="release.publish",
    summary="Publish a release list signed offline (edgefleet keys sign-release)",
    tags=["models"],
    response_model=ReleasePublished,
    responses=problem_responses(403, 409),
)
def publish_release(
    body: ReleaseListIn, operator: OperatorDep, services: ServicesDep
) -> ReleasePublished:
    """The body is the DSSE envelope that ``edgefleet keys sign-release`` wrote.
    \f
    Raises:
        Malformed, WrongKind: not a release list envelope (400).
        ThresholdNotMet: not signed by the root's release keys (403).
        Conflict: expired, not newer than the published list, or naming versions the
            registry does not hold (409).
    """
    document = SignedDocument.from_bytes(canonical.dumps(body.model_dump()))
    release = services.registry.publish_release_list(document, actor=operator.actor)
    return ReleasePublished(
        version=release.version, expires=release.expires, entries=len(release.entries)
    )


@router.get(
    "/releases/pending",
    name="release.pending",
    summary="The release list waiting for the offline release key (to sign elsewhere)",
    tags=["models"],
    response_model=ReleaseListDocument,
    responses=problem_responses(404),
)
def pending_release(_: ViewerDep, services: ServicesDep) -> ReleaseListDocument:
    """\f
    Raises:
        NotFound: no release list is waiting (the release key is on the hub, or the
            newest list is signed).
    """
    pending = services.registry.pending_release()
    if pending is None:
        raise NotFound("no release list is pending")
    return ReleaseListDocument(**json.loads(pending.to_bytes()))


@router.get(
    "/artifacts/{sha256}",
    name="artifact.get",
    summary="Download a released artifact by its sha256 (Range: bytes=first-last for a part)",
    tags=["models"],
    response_class=OctetStreamResponse,
    responses={
        200: {"content": _BINARY},
        206: {"description": "Part of the artifact", "content": _BINARY},
        **problem_responses(404, 416),
    },
)
def get_artifact(
    sha256: Annotated[str, Path(pattern=SHA256_PATTERN, description="64 lowercase hex")],
    _: ViewerDep,
    store: StoreDep,
    services: ServicesDep,
    range_header: Annotated[
        str | None, Header(alias="Range", max_length=100, description="bytes=first-last")
    ] = None,
) -> Response:
    wanted = _range(range_header)
    if wanted is None:
        whole = http_artifact(store, services.artifacts, sha256)
        return OctetStreamResponse(whole.data, headers={"Accept-Ranges": "bytes"})
    first, length = wanted
    try:
        part = http_artifact(store, services.artifacts, sha256, offset=first, length=length)
    except InvalidRequest as e:
        total = services.artifacts.size(sha256)
        headers = {"Content-Range": f"bytes */{total}"}
        return problem(416, "range_not_satisfiable", str(e), headers=headers)
    last = part.offset + len(part.data) - 1
    return OctetStreamResponse(
        part.data,
        status_code=206,
        headers={
            "Accept-Ranges": "bytes",
            "Content-Range": f"bytes {part.offset}-{last}/{part.total_length}",
        },
    )


def _read(file: BinaryIO, limit: int, what: str) -> bytes:
    """Raises Oversize: more than ``limit`` bytes; InvalidRequest: an empty file (the
    schema says ``minLength: 1``: an empty validation file is not "no validation")."""
    data = file.read(limit + 1)
    if len(data) > limit:
        raise Oversize(f"{what} exceeds {limit} bytes")
    if not data:
        raise InvalidRequest(f"{what} is an empty file")
    return data


def _range(header: str | None) -> tuple[int, int] | None:
    """(first byte, length) of a single ``bytes=first-last`` range; None to send it all.

    Anything else (several ranges, suffix ranges, other units) is ignored, as RFC 9110
    allows: the whole artifact is sent.
    """
    match = _RANGE.fullmatch(header or "")
    if match is None:
        return None
    first = int(match.group(1))
    last = int(match.group(2)) if match.group(2) else first + MAX_RANGE_BYTES - 1
    if last < first:
        return None
    return first, min(last - first + 1, MAX_RANGE_BYTES)


def _version(info: VersionInfo) -> ModelVersion:
    manifest: dict[str, Any] = schema.to_json(info.manifest)
    return ModelVersion(
        name=info.name,
        version=info.version,
        sha256=info.sha256,
        length=info.length,
        release_counter=info.release_counter,
        status=info.status,
        parent_version=info.parent_version,
        made_by=info.made_by,
        created_at=info.created_at,
        created_by=info.created_by,
        lineage=info.lineage,
        manifest=manifest,
    )
