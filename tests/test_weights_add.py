"""`orchestrator weights add MODEL FILE...`: a file fetched by hand is identified, converted
where its model needs it, verified by loading it into its network, and copied in.

Every model's required files are built here in their official layout with random weights:
at each model's tiny parity configuration (fast, every model), and at the released size
(the networks that build in seconds run by default, the big ones are marked slow).
"""
from __future__ import annotations

import re

import pytest

from orchestrator.commands import weights
from orchestrator.errors import UserError
from services.stagekit import fetch
from services.stagekit import weights as store

from .helpers import run_cli
from .weights_files import official_file, parity_config

MODELS = ["ddcolor", "diffbir", "mat", "mmprnn", "propainter", "psrt", "rvrt", "sfadacof",
          "tape", "tcvc", "uformer"]
QUICK_AT_FULL_SIZE = {"mmprnn", "rvrt", "sfadacof"}     # a few seconds each on 2 cores


def required(model: str) -> list[store.WeightsFile]:
    # CLIP RN50x4 (TAPE's reference scoring) is OpenAI's TorchScript file with a published
    # sha256: a random one cannot match it, so the store holds it only as pulled.
    return [e for e in store.manifest(model) if not e.optional and e.name != "RN50x4.pt"]


def add_every_required_file(model, tmp_path, arch):
    store_dir = tmp_path / "store"
    for entry in required(model):
        path = official_file(model, entry.name, tmp_path / "downloads", arch)
        assert fetch.add(model, path, store_dir, arch)[0] == entry
        state = store.file_state(model, entry, store_dir)
        assert state.verified and state.detail == store.sha256_file(store_dir / model / entry.loaded)
    return store_dir


@pytest.mark.parametrize("model", MODELS)
def test_add_imports_each_models_files_at_its_tiny_configuration(model, tmp_path):
    arch = parity_config(model)
    if arch is None:
        pytest.skip("parity fixtures not found (../shared)")
    store_dir = add_every_required_file(model, tmp_path, arch)
    if model != "tape":
        assert store.weights_present(model, store_dir)


@pytest.mark.parametrize("model", [pytest.param(m, marks=() if m in QUICK_AT_FULL_SIZE
                                                else pytest.mark.slow) for m in MODELS])
def test_add_imports_each_models_files_at_their_released_size(model, tmp_path):
    add_every_required_file(model, tmp_path, None)


def test_add_identifies_a_renamed_file_by_the_network_it_loads_into(tmp_path):
    arch = parity_config("tcvc")
    if arch is None:
        pytest.skip("parity fixtures not found (../shared)")
    encoder = official_file("tcvc", "checkpoint_encoder_finetune02010000.pth", tmp_path / "a", arch)
    renamed = encoder.rename(tmp_path / "download (1).pth")
    entry, _ = fetch.add("tcvc", renamed, tmp_path / "store", arch)
    assert entry.name == "checkpoint_encoder_finetune02010000.pth"
    assert (tmp_path / "store" / "tcvc" / entry.name).is_file()


def test_add_refuses_another_models_file_and_an_html_page(tmp_path):
    store_dir = tmp_path / "store"
    wrong = official_file("sfadacof", "model60.pth", tmp_path / "downloads")
    page = tmp_path / "downloads" / "006_RVRT_videodenoising_DAVIS_16frames.pth"
    page.write_text("<html><head><title>Sign in</title></head></html>")
    with pytest.raises(UserError) as refused:
        weights.add("rvrt", [wrong], root=store_dir, say=lambda _: None)
    assert re.fullmatch(r"\S*model60\.pth: not a rvrt checkpoint: does not load into the rvrt "
                        r"network: \S+ key in checkpoint: .*", str(refused.value))
    with pytest.raises(UserError, match=r"16frames\.pth: an HTML page, not a checkpoint"):
        weights.add("rvrt", [page], root=store_dir, say=lambda _: None)
    assert sorted(p.name for p in (store_dir / "rvrt").iterdir()) == []


def test_add_on_the_command_line(tmp_path, monkeypatch):
    monkeypatch.setenv("RESTORATION_WEIGHTS", str(tmp_path / "store"))
    good = official_file("mmprnn", "mmprnn_gopro.pth.tar", tmp_path / "downloads")
    bad = tmp_path / "downloads" / "truncated.pth.tar"
    bad.write_bytes(good.read_bytes()[:4096])
    result = run_cli("weights", "add", "mmprnn", good, bad)
    assert result.returncode == 1
    assert f"mmprnn/mmprnn_gopro.pth.tar: verified (sha256 {store.sha256_file(good)})" in result.stdout
    [error] = result.stderr.strip().splitlines()
    assert error.startswith(f"error: {bad}: not a mmprnn checkpoint") and "truncated or corrupt" in error
    assert store.weights_present("mmprnn")
