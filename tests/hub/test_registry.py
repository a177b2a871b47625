"""The registry: registration end to end on real onnxruntime, SQLite files and signatures.

Also home of the small hub builders the desired-state, reconciler and delivery tests
share (:func:`make_hub`, :func:`npz`, :func:`snapshot`).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hub import keyring
from hub.cli import model as cli_model
from hub.context import FleetPublisher, HubContext, Sender
from hub.errors import Conflict, InvalidRequest
from hub.keyring import Keyring
from hub.registry.artifacts import ArtifactStore
from hub.registry.registry import Registry
from hub.settings import HubSettings
from hub.store import NotFound, Store
from hub.store.sqlite import SqliteStore
from protocol import metadata, trust
from protocol.documents import SignedDocument, add_signature
from protocol.errors import ThresholdNotMet
from protocol.metadata import ReleaseList
from protocol.modelcheck import UnsafeModel
from protocol.package import decode_package
from protocol.tensors import decode_tensors
from tests import models
from tests.clock import FakeClock
from tests.hub.tables import snapshot as tables_snapshot

TABLES = ("models", "versions", "artifacts", "release_lists", "assignments", "desired", "meta")


def npz(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def reference(n: int = 200, features: int = 4, seed: int = 1) -> bytes:
    return npz(X=np.random.default_rng(seed).normal(size=(n, features)).astype(np.float32))


@dataclass
class Hub:
    """A hub's registry over a real SQLite file and artifact directory; fleet documents
    are recorded in ``published`` (or go to ``publisher``)."""

    root: Path
    clock: FakeClock
    store: Store
    artifacts: ArtifactStore
    ring: Keyring
    published: list[tuple[str, bytes]] = field(default_factory=list)
    offline_release_key: Path | None = None
    publisher: FleetPublisher | None = None
    registry: Registry = field(init=False)

    def __post_init__(self) -> None:
        self.registry = Registry(self.context(), self.artifacts)

    def publish(self, kind: str, payload: bytes) -> bool:
        self.published.append((kind, payload))
        return True

    def context(
        self, downlink: Sender | None = None, settings: HubSettings | None = None
    ) -> HubContext:
        """The hub context over this store, key ring and clock, publishing fleet
        documents to :attr:`publisher` (or :attr:`published`)."""
        return HubContext(
            self.store,
            self.ring,
            self.clock,
            settings or HubSettings(data_dir=self.root),
            downlink,
            self.publisher or self.publish,
        )

    def reload_keys(self) -> None:
        """Read the key ring again (a key was moved offline) into the context and registry."""
        self.ring = keyring.load(self.root / "keys")
        self.registry.ctx = self.context()

    def releases(self) -> list[bytes]:
        """The release lists published, oldest first."""
        return [payload for kind, payload in self.published if kind == "release"]

    def register(self, model: bytes | None = None, name: str = "iris", **kwargs: Any) -> Any:
        return self.registry.register(
            model if model is not None else models.gemm_classifier(),
            name=name,
            reference=kwargs.pop("reference", reference()),
            actor=kwargs.pop("actor", "tester"),
            **kwargs,
        )


def make_hub(
    root: Path,
    clock: FakeClock,
    *,
    release_online: bool = True,
    publisher: Callable[[str, bytes], bool] | None = None,
) -> Hub:
    """Key ring, store and registry under ``root``; the release key moved out when offline."""
    keyring.init(root / "keys", now_ms=clock.now_ms())
    offline = None
    if not release_online:
        offline = root / "usb" / "release.pem"
        offline.parent.mkdir()
        (root / "keys" / "release.pem").rename(offline)
    ring = keyring.load(root / "keys")
    store = SqliteStore.open(root / "hub.db")
    artifacts = ArtifactStore(root / "artifacts")
    return Hub(
        root, clock, store, artifacts, ring, offline_release_key=offline, publisher=publisher
    )


def snapshot(store: Store, tables: tuple[str, ...] = TABLES) -> dict[str, list[dict[str, Any]]]:
    return tables_snapshot(store, tables)


def files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() and p.suffix not in (".db-wal", ".db-shm")}


@pytest.fixture
def hub(tmp_path: Path, clock: FakeClock) -> Hub:
    return make_hub(tmp_path, clock)


def trusted_release(hub: Hub, doc: SignedDocument) -> ReleaseList:
    """Check ``doc`` the way a device does, from root v1."""
    state = trust.TrustedState.initial(hub.ring.chain[0])
    state = trust.update_release_list(state, doc, hub.clock.now_ms())
    assert state.release is not None
    return state.release


# ---------------------------------------------------------------- registration


@pytest.mark.parametrize(
    ("model", "kind"),
    [
        pytest.param(models.gemm_classifier, "gemm", id="hand-built-gemm"),
        pytest.param(lambda: models.mlp_classifier().model, "matmul_add", id="skl2onnx-mlp"),
    ],
)
def test_register_a_classifier_releases_version_1(
    hub: Hub, model: Callable[[], bytes], kind: str
) -> None:
    reg = hub.register(model())
    assert (reg.version, reg.release_counter, reg.release_version) == (1, 1, 1)
    assert not reg.release_pending
    assert reg.manifest.head is not None
    assert reg.manifest.head.kind == kind
    assert reg.manifest.head.feature in {o.name for o in reg.manifest.outputs}
    prof = reg.manifest.profile
    assert prof is not None
    assert prof.rows == 200
    assert len(prof.features) == 4
    for feature in prof.features:
        assert all(b > a for a, b in itertools.pairwise(feature.edges))
        assert sum(feature.proportions) == pytest.approx(1.0)
    assert prof.predictions is not None
    assert prof.predictions.kind == "classes"
    assert sum(prof.predictions.proportions) == pytest.approx(1.0)
    assert reg.manifest.latency_budget_ms >= 50.0

    package = hub.registry.download("iris", 1)
    assert len(package) == reg.length
    decoded = decode_package(package)
    assert decoded.manifest == reg.manifest
    smoke = decode_tensors(decoded.files["smoke.eft"])
    assert smoke[reg.manifest.inputs[0].name].shape == (8, 4)

    [(kind_published, payload), (then, _)] = hub.published
    assert (kind_published, then) == ("release", "heartbeat")  # a heartbeat pins it at once
    release = trusted_release(hub, SignedDocument.from_bytes(payload))
    [entry] = release.entries
    assert (entry.name, entry.version, entry.release_counter) == ("iris", 1, 1)
    assert (entry.sha256, entry.length) == (reg.sha256, reg.length)
    assert entry.compat.io_signature == reg.manifest.io_signature()
    assert hub.registry.get_version("iris", 1).status == "released"
    assert hub.store.counters.get("release_published") == 1


def test_second_registration_gets_version_2_and_counter_2(hub: Hub) -> None:
    hub.register()
    second = hub.register(models.mlp_classifier().model, reference=npz(X=models.mlp_classifier().x))
    assert (second.version, second.release_counter, second.release_version) == (2, 2, 2)
    release = trusted_release(hub, SignedDocument.from_bytes(hub.releases()[-1]))
    assert [(e.version, e.release_counter) for e in release.entries] == [(1, 1), (2, 2)]
    assert [v.version for v in hub.registry.list_versions("iris")] == [1, 2]
    [summary] = hub.registry.list_models()
    assert (summary.versions, summary.latest_version, summary.latest_released) == (2, 2, 2)
    lineage = hub.registry.lineage("iris", 2)
    assert [v.version for v in lineage] == [2, 1]
    assert lineage[0].lineage["parent"] == 1
    assert lineage[0].lineage["made_by"] == "upload"
    assert lineage[0].lineage["by"] == "tester"


def test_registration_survives_a_reopen_of_the_store(hub: Hub) -> None:
    reg = hub.register()
    hub.store.close()
    hub.store = SqliteStore.open(hub.root / "hub.db")
    registry = Registry(hub.context(), hub.artifacts)
    assert registry.get_version("iris", 1).sha256 == reg.sha256
    assert registry.download("iris", 1)


def test_validation_metrics_go_into_the_lineage(hub: Hub) -> None:
    exported = models.mlp_classifier()
    y = exported.estimator.predict(exported.x)
    reg = hub.register(
        exported.model,
        reference=npz(X=exported.x),
        validation=npz(X=exported.x, y=y),
    )
    assert reg.metrics["accuracy"] == pytest.approx(1.0)
    assert hub.registry.get_version("iris", 1).lineage["metrics"] == reg.metrics


def test_regressor_gets_prediction_bins(hub: Hub) -> None:
    exported = models.mlp_regressor()
    reg = hub.register(exported.model, name="load", reference=npz(X=exported.x))
    assert reg.manifest.head is not None
    assert reg.manifest.head.task == "regression"
    assert reg.manifest.profile is not None
    assert reg.manifest.profile.predictions is not None
    assert reg.manifest.profile.predictions.kind == "bins"


def test_model_without_a_head_registers_with_retraining_off(hub: Hub) -> None:
    exported = models.decision_tree()
    reg = hub.register(exported.model, name="tree", reference=npz(X=exported.x))
    assert reg.manifest.head is None
    assert reg.head_reason is not None
    assert "TreeEnsembleClassifier" in reg.head_reason
    assert hub.registry.get_version("tree", 1).lineage["head_reason"] == reg.head_reason


def test_explicit_head_node_is_used(hub: Hub) -> None:
    reg = hub.register(head="Gemm_2")
    assert reg.manifest.head is not None
    assert reg.manifest.head.node == "Gemm_2"


# ---------------------------------------------------------------- refusals change nothing


def refused(
    hub: Hub, error: type[Exception], call: Callable[[], object], match: str | None = None
) -> None:
    """``call`` raises ``error``; no table (but the audit log) and no file changed."""
    before, disk = snapshot(hub.store), files(hub.root)
    audits = hub.store.audit.count(outcome="rejected")
    with pytest.raises(error, match=match):
        call()
    assert snapshot(hub.store) == before
    assert files(hub.root) == disk
    assert hub.store.audit.count(outcome="rejected") == audits + 1


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(models.external_initializer, id="external-data-traversal"),
        pytest.param(models.external_constant_in_if, id="external-data-in-subgraph"),
        pytest.param(models.custom_domain_node, id="custom-domain"),
        pytest.param(models.evil_function, id="custom-domain-in-function"),
        pytest.param(lambda: models.huge_initializer(), id="memory-bomb"),
    ],
)
def test_hostile_model_is_refused_and_nothing_is_written(
    hub: Hub, model: Callable[[], bytes]
) -> None:
    refused(hub, UnsafeModel, lambda: hub.register(model()))
    assert not hub.artifacts.root_dir.exists()


def test_path_traversal_model_name_is_refused(hub: Hub) -> None:
    refused(hub, InvalidRequest, lambda: hub.register(name="../../agent/config"), "model name")
    assert not (hub.root.parent / "agent").exists()
    assert not hub.artifacts.root_dir.exists()


@pytest.mark.parametrize(
    "name", ["\u0456ris", "ir\u0456s", "iris\u200b", "\uff49ris", "iris\u2215x", "caf\u00e9"]
)
def test_a_model_name_with_non_ascii_characters_is_refused(hub: Hub, name: str) -> None:
    # confusables ("іris" with a Cyrillic і), invisible and look-alike slashes: refused,
    # so two models can never look alike in a listing or a path
    refused(hub, InvalidRequest, lambda: hub.register(name=name), "model name")
    assert not hub.artifacts.root_dir.exists()


def test_pickled_reference_data_is_refused(hub: Hub) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, X=np.array([object(), None], dtype=object))
    refused(hub, InvalidRequest, lambda: hub.register(reference=buffer.getvalue()), "pickle")


def test_reference_with_the_wrong_feature_count_is_refused(hub: Hub) -> None:
    refused(
        hub, InvalidRequest, lambda: hub.register(reference=reference(features=5)), "5 features"
    )


def test_unknown_head_node_is_refused(hub: Hub) -> None:
    refused(hub, InvalidRequest, lambda: hub.register(head="Gemm_0"), "no supported head")


# ---------------------------------------------------------------- offline release key


@pytest.fixture
def offline(tmp_path: Path, clock: FakeClock) -> Hub:
    return make_hub(tmp_path, clock, release_online=False)


def sign_offline(hub: Hub, doc: SignedDocument) -> SignedDocument:
    assert hub.offline_release_key is not None
    return add_signature(doc, keyring.read_private_key(hub.offline_release_key))


def test_offline_release_key_leaves_a_pending_release(offline: Hub) -> None:
    reg = offline.register()
    assert reg.release_pending
    assert offline.registry.get_version("iris", 1).status == "pending_release"
    assert offline.published == []
    pending = offline.registry.pending_release()
    assert pending is not None
    assert pending.signatures == ()
    assert metadata.parse(ReleaseList, pending).entries[0].sha256 == reg.sha256


def test_offline_signed_release_list_is_published(offline: Hub) -> None:
    offline.register()
    offline.register(models.mlp_classifier().model, reference=npz(X=models.mlp_classifier().x))
    pending = offline.registry.pending_release()
    assert pending is not None
    release = offline.registry.publish_release_list(
        sign_offline(offline, pending), actor="release-officer"
    )
    assert release.version == 2
    assert len(release.entries) == 2
    assert [v.status for v in offline.registry.list_versions("iris")] == ["released"] * 2
    [(kind, payload), (then, _)] = offline.published
    assert (kind, then) == ("release", "heartbeat")
    assert trusted_release(offline, SignedDocument.from_bytes(payload)) == release
    assert offline.registry.pending_release() is None


def test_release_list_signed_by_the_wrong_key_is_refused(offline: Hub) -> None:
    offline.register()
    pending = offline.registry.pending_release()
    assert pending is not None
    rollout = keyring.read_private_key(offline.root / "keys" / "rollout.pem")
    forged = add_signature(pending, rollout)
    refused(
        offline,
        ThresholdNotMet,
        lambda: offline.registry.publish_release_list(forged, actor="mallory"),
    )
    assert offline.published == []


def test_older_release_list_is_refused(offline: Hub) -> None:
    offline.register()
    first = offline.registry.pending_release()
    offline.register(models.mlp_classifier().model, reference=npz(X=models.mlp_classifier().x))
    second = offline.registry.pending_release()
    assert first is not None
    assert second is not None
    offline.registry.publish_release_list(sign_offline(offline, second), actor="officer")
    refused(
        offline,
        Conflict,
        lambda: offline.registry.publish_release_list(sign_offline(offline, first), actor="x"),
        "not newer",
    )


def test_release_list_naming_unregistered_bytes_is_refused(offline: Hub) -> None:
    reg = offline.register()
    entry = metadata.ReleaseEntry(
        "iris", 1, 1, "f" * 64, reg.length, metadata.Compat(21, reg.manifest.io_signature())
    )
    forged = ReleaseList(1, offline.clock.now_ms() + 10**9, (entry,))
    assert offline.offline_release_key is not None
    key = keyring.read_private_key(offline.offline_release_key)
    refused(
        offline,
        Conflict,
        lambda: offline.registry.publish_release_list(metadata.sign(forged, [key]), actor="x"),
        "not held",
    )


def raise_floor(hub: Hub, floor: int) -> ReleaseList:
    """The release officer signs the pending list with a higher rollback floor."""
    pending = hub.registry.pending_release()
    assert pending is not None
    draft = metadata.parse(ReleaseList, pending)
    raised = dataclasses.replace(draft, min_counter=floor)
    assert hub.offline_release_key is not None
    key = keyring.read_private_key(hub.offline_release_key)
    return hub.registry.publish_release_list(metadata.sign(raised, [key]), actor="officer")


def test_rollback_floor_is_carried_into_the_next_draft(offline: Hub) -> None:
    offline.register()
    offline.register(models.mlp_classifier().model, reference=npz(X=models.mlp_classifier().x))
    assert raise_floor(offline, 2).min_counter == 2
    offline.register(name="other")
    pending = offline.registry.pending_release()
    assert pending is not None
    assert metadata.parse(ReleaseList, pending).min_counter == 2


def test_release_list_lowering_the_floor_is_refused(offline: Hub) -> None:
    offline.register()
    offline.register(models.mlp_classifier().model, reference=npz(X=models.mlp_classifier().x))
    raise_floor(offline, 2)
    offline.register(name="other")
    pending = offline.registry.pending_release()
    assert pending is not None
    lowered = dataclasses.replace(metadata.parse(ReleaseList, pending), min_counter=1)
    assert offline.offline_release_key is not None
    key = keyring.read_private_key(offline.offline_release_key)
    refused(
        offline,
        Conflict,
        lambda: offline.registry.publish_release_list(metadata.sign(lowered, [key]), actor="x"),
        "rollback floor",
    )


def test_a_version_the_release_officer_leaves_out_is_withdrawn(offline: Hub) -> None:
    offline.register()
    offline.register(models.mlp_classifier().model, reference=npz(X=models.mlp_classifier().x))
    pending = offline.registry.pending_release()
    assert pending is not None
    draft = metadata.parse(ReleaseList, pending)
    assert offline.offline_release_key is not None
    key = keyring.read_private_key(offline.offline_release_key)
    trimmed = dataclasses.replace(draft, entries=draft.entries[1:])
    offline.registry.publish_release_list(metadata.sign(trimmed, [key]), actor="officer")
    assert [v.status for v in offline.registry.list_versions("iris")] == ["withdrawn", "released"]
    offline.register(name="other")
    pending = offline.registry.pending_release()
    assert pending is not None
    assert [e.name for e in metadata.parse(ReleaseList, pending).entries] == ["iris", "other"]


# ---------------------------------------------------------------- reading


def test_unknown_versions_are_not_found(hub: Hub) -> None:
    with pytest.raises(NotFound):
        hub.registry.get_version("iris", 1)
    with pytest.raises(NotFound):
        hub.registry.list_versions("iris")
    with pytest.raises(NotFound):
        hub.registry.download("iris", 1)


# ---------------------------------------------------------------- the CLI


def cli(*argv: str | Path | int) -> int:
    parser = argparse.ArgumentParser(prog="edgefleet")
    cli_model.register(parser.add_subparsers(required=True))
    args = parser.parse_args([str(a) for a in argv])
    code: int = args.handler(args)
    return code


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_cli_registers_lists_and_shows(hub: Hub, capsys: pytest.CaptureFixture[str]) -> None:
    model = write(hub.root / "m.onnx", models.gemm_classifier())
    ref = write(hub.root / "ref.npz", reference())
    assert (
        cli("model", "register", model, "--name", "iris", "--reference", ref, "--data", hub.root)
        == 0
    )
    assert "registered iris v1: release counter 1" in capsys.readouterr().out
    assert cli("model", "list", "--data", hub.root) == 0
    assert "latest v1, released v1" in capsys.readouterr().out
    assert cli("model", "show", "iris", "1", "--data", hub.root) == 0
    shown = capsys.readouterr().out
    assert "iris v1: released, release counter 1" in shown
    assert "Gemm_2 (gemm, classification)" in shown


def test_cli_reports_a_bad_name_in_one_line(hub: Hub, capsys: pytest.CaptureFixture[str]) -> None:
    model = write(hub.root / "m.onnx", models.gemm_classifier())
    ref = write(hub.root / "ref.npz", reference())
    code = cli("model", "register", model, "--name", "../x", "--reference", ref, "--data", hub.root)
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("edgefleet model register: error: body.name: String should match")
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_cli_offline_release_round_trip(offline: Hub, capsys: pytest.CaptureFixture[str]) -> None:
    model = write(offline.root / "m.onnx", models.gemm_classifier())
    ref = write(offline.root / "ref.npz", reference())
    data = offline.root
    assert (
        cli("model", "register", model, "--name", "iris", "--reference", ref, "--data", data) == 0
    )
    assert "`edgefleet model pending --out pending.json`" in capsys.readouterr().out
    pending = data / "pending.json"
    assert cli("model", "pending", "--out", pending, "--data", data) == 0
    assert offline.offline_release_key is not None
    key = keyring.read_private_key(offline.offline_release_key)
    keyring.sign_release(pending, key, now_ms=offline.clock.now_ms(), out=data / "signed.json")
    assert cli("model", "publish", data / "signed.json", "--data", data) == 0
    assert "published release list v1 with 1 entries" in capsys.readouterr().out
    assert offline.registry.get_version("iris", 1).status == "released"
    assert cli("model", "pending", "--out", data / "again.json", "--data", data) == 1


def test_cli_help_teaches_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (("model",), ("model", "register"), ("model", "publish"), ("rollout", "set")):
        with pytest.raises(SystemExit):
            cli(*command, "--help")
        assert "example" in capsys.readouterr().out
