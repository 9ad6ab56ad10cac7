"""`orchestrator weights pull|list`: a file counts only once it has loaded into its network.

The files are served by a local HTTP server (with range requests) under the manifest's
names, through the --mirror option: an HTML page, a truncated file and another model's
checkpoint are refused and leave nothing in the store; a full-size checkpoint in the
official layout (random weights) is installed, listed as verified, and `auto` picks it.
"""
from __future__ import annotations

import http.server
import re
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import pytest

from orchestrator.commands import weights
from orchestrator.errors import UserError
from orchestrator.pipeline import registry
from services.stagekit import fetch
from services.stagekit import weights as store
from services.stagekit.testing import free_port

from .helpers import run_cli
from .weights_files import official_file

MODEL, FILE = "sfadacof", "model60.pth"     # a full-size network small enough to build quickly


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files whole or from a ``Range: bytes=N-``; a file named in ``server.cut``
    is cut off after that many bytes on its first request (the connection closes)."""

    def do_GET(self):
        path = Path(self.directory) / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        asked = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        start = int(asked.group(1)) if asked else 0
        if start >= len(data) and asked:
            self.send_error(416)
            return
        self.send_response(206 if asked else 200)
        if asked:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        cut = self.server.cut.pop(self.path, None)
        self.server.requests.append((self.path, start))
        self.wfile.write(body[:cut] if cut is not None else body)
        if cut is not None:
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path):
    root = tmp_path / "www"
    (root / MODEL).mkdir(parents=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(root)))
    server.cut, server.requests = {}, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root / MODEL, f"http://127.0.0.1:{server.server_address[1]}", server
    server.shutdown()


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> Path:
    """SF-AdaCoF's model60.pth at its released size (8,585,590 values), random weights."""
    return official_file(MODEL, FILE, tmp_path_factory.mktemp("valid"))


@pytest.fixture
def weights_store(tmp_path, monkeypatch):
    path = tmp_path / "store"
    monkeypatch.setenv("RESTORATION_WEIGHTS", str(path))
    return path


def left_in(store_dir: Path) -> list[str]:
    """What a pull left in the model's folder besides the lock."""
    folder = store_dir / MODEL
    return sorted(p.name for p in folder.iterdir() if p.name != store.LOCK) if folder.is_dir() else []


@pytest.mark.parametrize("kind,reason", [
    ("html", "an HTML page, not a checkpoint"),
    ("truncated", "truncated or corrupt"),
    ("wrong model", "does not load into the sfadacof network: missing key"),
])
def test_a_bad_file_is_refused_in_one_line_and_leaves_nothing(mirror, valid, weights_store,
                                                                 kind, reason):
    served, base, _ = mirror
    if kind == "html":
        (served / FILE).write_text("<!DOCTYPE html>\n<html><body>Sign in to continue</body></html>\n")
    elif kind == "truncated":
        (served / FILE).write_bytes(valid.read_bytes()[: valid.stat().st_size // 2])
    else:
        official_file("mmprnn", FILE, served)      # MMP-RNN's checkpoint under SF-AdaCoF's name
    if kind == "html":         # through the command line once: exit status 1, no traceback
        result = run_cli("weights", "pull", MODEL, "--mirror", base)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        output = (result.stdout + result.stderr).splitlines()
    else:
        output = []
        with pytest.raises(UserError, match=f"weights incomplete for {MODEL}"):
            weights.pull([MODEL], mirror=base, say=output.append)
    [line] = [line for line in output if line.startswith(f"error: {MODEL}/{FILE}")]
    assert reason in line
    assert left_in(weights_store) == []
    assert not store.weights_present(MODEL)
    assert registry.resolve("interpolate", "auto") == "classical"
    listed = "\n".join(weights.listing())
    assert re.search(rf"{MODEL} +{FILE} +failed .*{re.escape(reason)}", listed)


def test_a_valid_checkpoint_is_installed_listed_verified_and_picked_by_auto(mirror, valid,
                                                                            weights_store):
    served, base, _ = mirror
    (served / FILE).write_bytes(valid.read_bytes())
    assert registry.resolve("interpolate", "auto") == "classical"
    result = run_cli("weights", "pull", MODEL, "--mirror", base)
    assert result.returncode == 0, result.stdout + result.stderr
    assert left_in(weights_store) == [FILE]
    digest = store.sha256_file(valid)
    listed = run_cli("weights", "list").stdout
    assert re.search(rf"{MODEL} +{FILE} +verified +{digest}", listed)
    assert re.search(r"licence: none stated: Go-MinSeong/SF-AdaCoF", listed)
    assert registry.resolve("interpolate", "auto") == MODEL
    again = []
    weights.pull([MODEL], mirror=base, say=again.append)
    assert f"{MODEL}/{FILE}: verified (sha256 {digest})" in again


def test_an_interrupted_download_resumes_where_it_stopped(mirror, valid, weights_store):
    served, base, server = mirror
    (served / FILE).write_bytes(valid.read_bytes())
    half = valid.stat().st_size // 2
    server.cut[f"/{MODEL}/{FILE}"] = half
    lines = []
    outcome = fetch.pull(MODEL, mirror=base, say=lines.append)
    assert outcome.installed == [FILE]
    (first, at_zero), (second, resumed_at) = server.requests    # the second asks for the rest
    assert first == second == f"/{MODEL}/{FILE}" and at_zero == 0 and 0 < resumed_at <= half
    assert any("resuming" in line for line in lines)
    assert store.file_state(MODEL, store.manifest(MODEL)[0]).detail == store.sha256_file(valid)


def test_a_partial_file_from_an_earlier_run_is_continued(mirror, valid, weights_store):
    served, base, server = mirror
    (served / FILE).write_bytes(valid.read_bytes())
    part = weights_store / MODEL / f".download-{FILE}"
    part.parent.mkdir(parents=True)
    part.write_bytes(valid.read_bytes()[:1000])
    fetch.pull(MODEL, mirror=base, say=lambda _: None)
    assert server.requests == [(f"/{MODEL}/{FILE}", 1000)]
    assert left_in(weights_store) == [FILE]


def test_a_file_changed_after_verification_is_reported_and_not_loaded(mirror, valid, weights_store):
    from services.sfadacof.stage import create_stage

    served, base, _ = mirror
    (served / FILE).write_bytes(valid.read_bytes())
    fetch.pull(MODEL, mirror=base, say=lambda _: None)
    assert create_stage(device="cpu").weights_identity() == store.sha256_file(valid)
    installed = weights_store / MODEL / FILE
    data = bytearray(installed.read_bytes())
    data[len(data) // 2] ^= 0xFF                        # one byte flipped, same size
    installed.write_bytes(bytes(data))
    listed = "\n".join(weights.listing())
    assert re.search(rf"{MODEL} +{FILE} +altered +changed since it was verified: sha256", listed)
    assert not store.weights_present(MODEL)
    assert registry.resolve("interpolate", "auto") == "classical"
    with pytest.raises(store.WeightsError, match=rf"{FILE}: changed since it was verified.*not loaded"):
        create_stage(device="cpu")
    service = subprocess.run([sys.executable, "-m", f"services.{MODEL}", "--listen",
                              f"127.0.0.1:{free_port()}", "--device", "cpu"],
                             capture_output=True, text=True, timeout=120)
    assert service.returncode == 1
    [line] = service.stderr.strip().splitlines()
    assert line.startswith(f"error: {installed}: changed since it was verified") and "not loaded" in line


def test_a_file_never_verified_does_not_count(weights_store):
    (weights_store / MODEL).mkdir(parents=True)
    (weights_store / MODEL / FILE).write_bytes(b"copied in by hand")
    assert not store.weights_present(MODEL)
    listed = "\n".join(weights.listing())
    assert re.search(rf"{MODEL} +{FILE} +unverified +not verified \(run: orchestrator weights add", listed)


def test_pull_all_ends_with_what_to_fetch_by_hand_and_where(weights_store, monkeypatch):
    monkeypatch.setattr(weights, "known_models", lambda: ["mat", "uformer"])
    lines = []
    with pytest.raises(UserError, match="weights incomplete for mat, uformer"):
        weights.pull(["all"], say=lines.append)
    at = lines.index("fetch by hand, then run 'orchestrator weights add MODEL FILE':")
    assert lines[at - 1].startswith("weights: 0 installed, 0 already verified, 2 to fetch by hand")
    mat, uformer = lines[at + 1:at + 3]
    assert mat.startswith("  mat/Places_512_FullData.pkl: https://mycuhk-my.sharepoint.com/")
    assert "download the file 'Places_512_FullData.pkl'" in mat
    assert uformer.startswith("  uformer/model_best.pth: https://mailustceducn-my.sharepoint.com/")


def test_every_manifest_says_where_each_file_comes_from():
    for model in weights.known_models():
        for entry in store.manifest(model):
            assert entry.url.startswith("https://"), (model, entry.name)
            assert entry.licence, (model, entry.name)
            folder_page = re.search(r"/folders/|sharepoint\.com|onedrive", entry.url)
            assert bool(folder_page) == bool(entry.by_hand), (model, entry.name)
            drive = "drive.google.com" in entry.url
            assert not drive or folder_page or fetch.DRIVE_FILE.search(entry.url), (model, entry.name)


def test_pull_without_torch_says_where_to_run_it_before_downloading(mirror, weights_store, monkeypatch):
    import importlib.util
    _, base, server = mirror
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    with pytest.raises(UserError, match="needs torch: run this where torch is"):
        weights.pull([MODEL], mirror=base, say=lambda _: None)
    assert server.requests == []
