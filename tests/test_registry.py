"""`auto` picks a neural model exactly when its weights are in the store, verified; `stages` says so."""
from __future__ import annotations

import pytest

from orchestrator.pipeline import registry
from services.stagekit.weights import manifest, record_verified, sha256_file, weights_path

from .helpers import run_cli

NEURAL = sorted({(task, model) for task, models in registry.NEURAL.items() for model in models
                 if manifest(model)})


@pytest.mark.parametrize("task,model", NEURAL)
def test_auto_uses_a_model_once_its_weights_are_present(tmp_path, monkeypatch, task, model):
    monkeypatch.setenv("RESTORATION_WEIGHTS", str(tmp_path))
    assert registry.resolve(task, "auto") == "classical"
    for entry in manifest(model):
        if not entry.optional:
            path = weights_path(model, entry.loaded)   # what the service reads
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"weights")
    assert registry.resolve(task, "auto") == "classical"     # present, never verified
    for entry in manifest(model):
        if not entry.optional:
            record_verified(model, entry.loaded, sha256_file(weights_path(model, entry.loaded)))
    preferred = [m for m in registry.NEURAL[task] if registry.status(task, m).runnable]
    assert registry.resolve(task, "auto") == preferred[0]
    assert model in preferred


def test_auto_falls_back_to_classical(tmp_path, monkeypatch):
    monkeypatch.setenv("RESTORATION_WEIGHTS", str(tmp_path))
    for task in registry.TASKS:
        assert registry.resolve(task, "auto") == "classical"


def test_stages_lists_every_task_and_model(tmp_path):
    result = run_cli("stages")
    assert result.returncode == 0, result.stderr
    for task in registry.TASKS:
        assert f"{task:<12} classical" in result.stdout
    for _, model in NEURAL:
        assert f" {model} " in result.stdout


def test_an_in_process_stage_takes_the_precision_it_is_given(tmp_path, monkeypatch):
    """Given, not read from the environment: two jobs of one service may ask differently;
    a classical stage runs whatever a job asks of the neural ones."""
    import torch
    from services.stagekit import randomweights
    randomweights.install("mmprnn", tmp_path)
    monkeypatch.setenv("RESTORATION_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("RESTORATION_PRECISION", "fp32")
    assert registry.create_local("deblur", "mmprnn", "cpu", "bf16").dtype == torch.bfloat16
    assert registry.create_local("deblur", "mmprnn", "cpu").dtype == torch.float32
    monkeypatch.setenv("RESTORATION_PRECISION", "bf16")
    assert registry.create_local("deblur", "mmprnn", "cpu", "fp32").dtype == torch.float32
    assert registry.create_local("deblur", "classical", "cpu", "bf16").task == "deblur"
