"""Acceptance 1 (compose): docker-compose.yml is valid against the Compose specification's
schema and agrees with the pipeline it mounts, the service table and the Dockerfiles."""
from __future__ import annotations

import copy
import json

import jsonschema
import pytest
import yaml

from deploy.stack import (JOB_STORE, ORCHESTRATOR, PIPELINE, ROOT, WEIGHTS, by_model, deployed, neural,
                          pipeline_services)
from services.stagekit.testing import shared_dir

from .recipes import Recipe

SCHEMA = shared_dir() / "schemas" / "compose-spec.json"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def validator():
    if not SCHEMA.is_file():
        pytest.skip(f"no compose schema at {SCHEMA}")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)   # the schema names draft-07
    return jsonschema.Draft7Validator(schema)


def mounted_pipeline(compose) -> list[dict]:
    for volume in compose["services"][ORCHESTRATOR.name]["volumes"]:
        source, _, rest = volume.partition(":")
        if rest.split(":")[0] == PIPELINE:
            return yaml.safe_load((ROOT / source).read_text())["stages"]
    raise AssertionError(f"the orchestrator mounts no pipeline at {PIPELINE}")


def test_compose_file_is_valid_against_the_compose_schema(compose, validator):
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors


def test_the_schema_check_rejects_an_unknown_key(compose, validator):
    broken = copy.deepcopy(compose)
    broken["services"][ORCHESTRATOR.name]["gpus_please"] = 1
    assert list(validator.iter_errors(broken))


def test_every_pipeline_model_has_its_service_port_command_and_weights(compose):
    services = compose["services"]
    for stage in mounted_pipeline(compose):
        service = by_model(stage["model"])
        entry = services[service.name]
        assert stage["endpoint"] == f"grpc://{service.name}:{service.port}"
        assert entry["command"] == service.command
        assert entry["expose"] == [str(service.port)]
        assert entry["environment"]["RESTORATION_WEIGHTS"] == WEIGHTS
        if service.gpu:
            assert f"weights:{WEIGHTS}:ro" in entry["volumes"]


def test_model_services_reserve_a_gpu_after_their_own_weights_are_pulled(compose):
    """Each model's weights are pulled by its own image (torch and its loader verify them,
    MAT's converter runs there), and only that model waits for them."""
    services = compose["services"]
    for service in neural():
        entry = services[service.name]
        (device,) = entry["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
        assert f"weights:{WEIGHTS}:ro" in entry["volumes"]
        if (ROOT / "services" / service.model / "weights.json").is_file():
            pull = services[f"weights-{service.model}"]
            assert pull["image"] == service.image
            assert pull["command"] == ["python", "-m", "services.stagekit.fetch", service.model]
            assert pull["volumes"] == [f"weights:{WEIGHTS}"]
            assert entry["depends_on"] == {f"weights-{service.model}":
                                           {"condition": "service_completed_successfully"}}
    assert "deploy" not in services["classical"]


def test_the_orchestrator_starts_after_its_pipelines_services_and_keeps_its_jobs(compose):
    entry = compose["services"][ORCHESTRATOR.name]
    assert entry["command"] == ORCHESTRATOR.command
    assert f"jobs:{JOB_STORE}" in entry["volumes"] and "jobs" in compose["volumes"]
    named = {by_model(stage["model"]).name for stage in mounted_pipeline(compose)}
    # a model kept down by its weights does not keep the orchestrator down
    assert entry["depends_on"] == {
        s.name: {"condition": "service_healthy", **({"required": False} if s.gpu else {})}
        for s in deployed() if s.name in named}


def test_the_default_profile_starts_exactly_the_pipelines_services(compose):
    started = {name for name, entry in compose["services"].items() if not entry.get("profiles")}
    named = {by_model(stage["model"]).name for stage in mounted_pipeline(compose)}
    pulls = {f"weights-{s.model}" for s in pipeline_services()} & set(compose["services"])
    assert started == named | pulls | {ORCHESTRATOR.name}
    # the seven models, and the classical service for the deinterlace task
    assert named == {s.name for s in pipeline_services()} and len(named) == 8
    for service in deployed():
        if service.image_pipeline:
            assert compose["services"][service.name]["profiles"] == ["image"]


def test_the_job_api_is_published_on_this_host_unless_a_token_is_set(compose):
    entry = compose["services"][ORCHESTRATOR.name]
    (published,) = entry["ports"]
    assert published == f"${{RESTORATION_PUBLISH:-127.0.0.1}}:{ORCHESTRATOR.port}:{ORCHESTRATOR.port}"
    assert entry["environment"]["RESTORATION_TOKEN"] == "${RESTORATION_TOKEN:-}"
    for name, other in compose["services"].items():
        assert all(p.startswith("127.0.0.1:") for p in other.get("ports", [])) or name == ORCHESTRATOR.name


def test_every_built_image_matches_its_dockerfile(compose):
    """The command compose runs is the image's CMD, on the port its HEALTHCHECK checks."""
    for name, entry in compose["services"].items():
        recipe = Recipe.read(ROOT / entry["build"]["dockerfile"])
        assert entry["build"]["context"] == "."
        if name.startswith("weights-"):
            assert entry["build"] == compose["services"][name.removeprefix("weights-")]["build"]
            continue
        assert entry["command"] == recipe.cmd
        port = recipe.exposed[0]
        assert recipe.healthcheck[-1] == f"127.0.0.1:{port}"
        assert f"0.0.0.0:{port}" in entry["command"]
