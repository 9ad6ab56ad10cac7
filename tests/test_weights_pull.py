"""`orchestrator weights pull`: downloads from a manifest's URL, verifies, never half-writes."""
from __future__ import annotations

import hashlib
import http.server
import json
import threading
from functools import partial

import pytest

from orchestrator.commands import weights
from orchestrator.errors import UserError
from services.stagekit import weights as store


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """A model folder with a one-file manifest, in a services tree of the test's own."""
    services = tmp_path / "services"
    (services / "fakenet").mkdir(parents=True)
    payload = b"not really a checkpoint" * 100
    monkeypatch.setattr(store, "SERVICES", services)
    monkeypatch.setattr(weights, "known_models", lambda: ["fakenet"])

    def write_manifest(url, sha256=hashlib.sha256(payload).hexdigest(), size=len(payload)):
        (services / "fakenet" / "weights.json").write_text(json.dumps({"model": "fakenet", "files": [
            {"name": "fakenet.pth", "url": url, "size": size, "sha256": sha256,
             "licence": "test", "role": "network"}]}))
    return payload, write_manifest


def test_pull_downloads_and_verifies(tmp_path, http_root, fake_model):
    root, base = http_root
    payload, write_manifest = fake_model
    (root / "fakenet.pth").write_bytes(payload)
    write_manifest(f"{base}/fakenet.pth")
    store_dir = tmp_path / "store"
    [path] = weights.pull("fakenet", root=store_dir, say=lambda _: None)
    assert path.read_bytes() == payload
    assert store.weights_present("fakenet", store_dir)
    lines = []
    weights.pull("fakenet", root=store_dir, say=lines.append)
    assert "present" in lines[0]


def test_pull_refuses_a_wrong_checksum_and_leaves_nothing(tmp_path, http_root, fake_model):
    root, base = http_root
    payload, write_manifest = fake_model
    (root / "fakenet.pth").write_bytes(payload[:-1] + b"X")
    write_manifest(f"{base}/fakenet.pth")
    store_dir = tmp_path / "store"
    with pytest.raises(UserError, match="sha256"):
        weights.pull("fakenet", root=store_dir, say=lambda _: None)
    assert not any(store_dir.rglob("*.pth*"))


def test_pull_from_a_mirror_and_a_dead_url(tmp_path, http_root, fake_model):
    root, base = http_root
    payload, write_manifest = fake_model
    (root / "fakenet").mkdir()
    (root / "fakenet" / "fakenet.pth").write_bytes(payload)
    write_manifest("http://127.0.0.1:9/unreachable.pth")
    store_dir = tmp_path / "store"
    with pytest.raises(UserError, match="download"):
        weights.pull("fakenet", root=store_dir, say=lambda _: None)
    [path] = weights.pull("fakenet", root=store_dir, mirror=base, say=lambda _: None)
    assert path.read_bytes() == payload


def test_every_manifest_is_complete():
    for model in weights.known_models():
        for entry in store.manifest(model):
            assert entry.url.startswith("http"), (model, entry)
            assert entry.licence, (model, entry)
