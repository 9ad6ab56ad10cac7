"""Acceptance 2: each image's recipe proven without a Docker engine.

The Dockerfile is replayed (tests/deploy/recipes.py): a virtualenv made from the service's
own lock file by the Dockerfile's own ``pip install``, only the sources its COPY lines
take, its ENV; then its CMD runs as a process, its HEALTHCHECK must pass, and Describe and
a Process round trip must answer as the service does in-process."""
from __future__ import annotations

import contextlib
import subprocess
from fractions import Fraction

import numpy as np
import pytest

from deploy.stack import ORCHESTRATOR, VIDEO_TASKS, by_model
from services.stagekit import ClipInfo
from services.stagekit.client import StageClient
from services.stagekit.testing import free_port, parity_dir, wait_serving

from .recipes import Recipe, build_env, install_app


def _moved(args: list[str], port: int, new: int) -> list[str]:
    return [a.replace(f"0.0.0.0:{port}", f"127.0.0.1:{new}").replace(f"127.0.0.1:{port}", f"127.0.0.1:{new}")
            for a in args]


@contextlib.contextmanager
def running_image(recipe: Recipe, tmp_path, *extra: str, env: dict | None = None):
    """The image's CMD on a free loopback port; yields (address, its HEALTHCHECK command,
    the process environment)."""
    venv = build_env(recipe)
    app = recipe.stage_app(tmp_path / "app")
    weights = tmp_path / "weights"
    weights.mkdir()
    environment = {**recipe.process_env(venv, app, weights), **(env or {})}
    port, new = recipe.exposed[0], free_port()
    proc = subprocess.Popen([*_moved(recipe.cmd, port, new), *extra], cwd=app, env=environment)
    try:
        wait_serving(f"127.0.0.1:{new}", 120, proc)
        yield f"127.0.0.1:{new}", _moved(recipe.healthcheck, port, new), environment
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def locked_names(recipe: Recipe) -> set[str]:
    lines = recipe.lock.read_text().splitlines()
    return {line.split("==")[0].lower() for line in lines if line and not line.startswith("#")}


def clip(frames, **params) -> ClipInfo:
    height, width = frames[0].shape[:2]
    return ClipInfo("clip", width=width, height=height, fps=Fraction(30000, 1001),
                    params={k: str(v) for k, v in params.items()}, frame_count=len(frames))


def test_classical_image_serves_from_its_own_lock(tmp_path):
    service = by_model("classical")
    recipe = Recipe.read(service.dockerfile)
    assert "torch" not in locked_names(recipe)      # the CPU image stays small
    frames = [np.random.default_rng(i).integers(0, 256, (40, 56, 3), dtype=np.uint8) for i in range(5)]
    from services.classical.stage import create_stage
    local = next(s for s in create_stage() if s.task == "denoise")
    expected = list(local.run(clip(frames), iter(frames))[1])
    with running_image(recipe, tmp_path) as (address, health, environment):
        checked = subprocess.run(health, cwd=tmp_path / "app", env=environment,
                                 capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0 and checked.stdout.strip() == "SERVING"
        with StageClient(address, timeout=60) as client:
            assert {d["task"] for d in client.describe()} == set(VIDEO_TASKS)
            out_info, out = client.process(clip(frames), iter(frames), batch=2, task="denoise")
            out = list(out)
    assert (out_info.width, out_info.height, len(out)) == (56, 40, len(frames))
    assert all(np.array_equal(a, b) for a, b in zip(out, expected))


@pytest.mark.slow
def test_sfadacof_image_serves_the_authors_reference_from_its_own_lock(tmp_path):
    """A torch image (torch 2.14.1 and its CUDA wheels: minutes the first time)."""
    from services.stagekit import parity
    from services.stagekit.parity import uint8_pm1
    fixtures = parity_dir("sfadacof")
    if not (fixtures / "config.json").is_file():
        pytest.skip(f"no fixtures in {fixtures}")
    recipe = Recipe.read(by_model("sfadacof").dockerfile)
    assert "torch" in locked_names(recipe)
    arrays = parity.load_arrays(fixtures, "tiny_pipeline_case.npz")
    frames = arrays["frames_in"]
    with running_image(recipe, tmp_path, "--weights", str(fixtures / "tiny_state.safetensors"),
                       "--arch", str(fixtures / "config.json"), "--device", "cpu",
                       env={"OMP_NUM_THREADS": "1"}) as (address, health, environment):
        assert subprocess.run(health, cwd=tmp_path / "app", env=environment, timeout=30).returncode == 0
        with StageClient(address, timeout=300) as client:
            assert client.describe()[0]["model"] == "sfadacof"
            _, out = client.process(clip(frames, factor=2), iter(frames), batch=1)
            out = np.stack(list(out))
    reference = arrays["out_repeat1"]
    assert uint8_pm1(out[:len(reference)], reference) <= 1e-3


@pytest.mark.slow
def test_orchestrator_image_runs_the_weights_command_from_its_own_lock(tmp_path):
    """`orchestrator weights list` runs in the orchestrator's image (pulling runs in each
    model's own image; `orchestrator serve` is issue 5's)."""
    recipe = Recipe.read(ORCHESTRATOR.dockerfile)
    assert "torch" not in locked_names(recipe)
    venv = build_env(recipe, tmp_path / "venv")
    app = recipe.stage_app(tmp_path / "app")
    install_app(recipe, venv, app)
    weights = tmp_path / "weights"
    environment = recipe.process_env(venv, app, weights)
    listed = subprocess.run(["orchestrator", "weights", "list"], cwd=app, env=environment,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert f"weights store: {weights}" in listed.stdout
    assert all(model in listed.stdout for model in ("rvrt", "psrt", "sfadacof"))
