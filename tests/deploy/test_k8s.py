"""Acceptance 1 (Kubernetes): both overlays render; every object passes kubernetes-validate
in strict mode; the objects agree with the service table and with the pipeline they carry."""
from __future__ import annotations

import copy
import shutil

import kubernetes_validate
import pytest
import yaml

from deploy.stack import ORCHESTRATOR, PIPELINE, JOB_STORE, ROOT, UID, WEIGHTS, by_model, classical, neural

from .kustomize import render, render_kubectl, render_minimal

OVERLAYS = ROOT / "deploy" / "k8s" / "overlays"
K8S_VERSION = "1.37.0"


@pytest.fixture(scope="module", params=["gpu", "cpu"])
def overlay(request):
    return request.param, render(OVERLAYS / request.param)


def objects_of(objects, kind):
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pipeline_of(objects) -> list[dict]:
    (config,) = objects_of(objects, "ConfigMap").values()
    return yaml.safe_load(config["data"]["pipeline.yaml"])["stages"]


def container(deployment) -> dict:
    (main,) = deployment["spec"]["template"]["spec"]["containers"]
    return main


def test_every_object_is_valid_in_strict_mode(overlay):
    _, objects = overlay
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_strict_validation_rejects_an_unknown_field(overlay):
    _, objects = overlay
    broken = copy.deepcopy(objects_of(objects, "Deployment")["orchestrator"])
    broken["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_every_pipeline_model_has_a_deployment_and_headless_service_on_its_port(overlay):
    name, objects = overlay
    deployments, services = objects_of(objects, "Deployment"), objects_of(objects, "Service")
    stages = pipeline_of(objects)
    assert [s["task"] for s in stages] == list(by_model("classical").tasks)
    for stage in stages:
        service = by_model(stage["model"])
        assert stage["endpoint"] == f"grpc://{service.name}:{service.port}"
        main = container(deployments[service.name])
        assert main["command"] == service.command
        assert main["ports"][0]["containerPort"] == service.port
        assert main["readinessProbe"]["grpc"]["port"] == service.port
        assert main["livenessProbe"]["grpc"]["port"] == service.port
        spec = services[service.name]["spec"]
        assert spec["clusterIP"] == "None" and spec["ports"][0]["port"] == service.port
    if name == "cpu":
        assert {s["model"] for s in stages} == {"classical"}
    else:
        assert {s["model"] for s in stages} >= {"rvrt", "psrt", "sfadacof"}


def test_gpu_models_get_a_gpu_node_and_their_weights_from_the_volume():
    objects = render(OVERLAYS / "gpu")
    deployments = objects_of(objects, "Deployment")
    for service in neural():
        pod = deployments[service.name]["spec"]["template"]["spec"]
        main = container(deployments[service.name])
        assert main["resources"]["limits"]["nvidia.com/gpu"] == 1
        # the resource schedules it; the feature-discovery label is only preferred
        assert "nodeSelector" not in pod
        (preferred,) = pod["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        assert preferred["preference"]["matchExpressions"][0]["key"] == "nvidia.com/gpu.present"
        assert "requiredDuringSchedulingIgnoredDuringExecution" not in pod["affinity"]["nodeAffinity"]
        assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert {"name": "RESTORATION_WEIGHTS", "value": WEIGHTS} in main["env"]
        assert {"name": "weights", "mountPath": WEIGHTS, "readOnly": True} in main["volumeMounts"]
        if (ROOT / "services" / service.model / "weights.json").is_file():
            (init,) = pod["initContainers"]
            assert init["image"] == service.image      # torch and the model's loader verify
            assert init["command"] == ["python", "-m", "services.stagekit.fetch", service.model]
            assert {"name": "weights", "mountPath": WEIGHTS} in init["volumeMounts"]
        claim = next(v for v in pod["volumes"] if v["name"] == "weights")
        assert claim["persistentVolumeClaim"]["claimName"] in objects_of(objects, "PersistentVolumeClaim")


def test_every_stage_has_a_budget_and_an_autoscaler_and_runs_as_non_root(overlay):
    _, objects = overlay
    budgets, scalers = objects_of(objects, "PodDisruptionBudget"), objects_of(objects, "HorizontalPodAutoscaler")
    for name, deployment in objects_of(objects, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == UID
        assert container(deployment)["resources"]["requests"]
        if name != ORCHESTRATOR.name:
            assert budgets[name]["spec"]["selector"] == deployment["spec"]["selector"]
            assert scalers[name]["spec"]["scaleTargetRef"]["name"] == name


def test_only_the_orchestrator_reaches_the_stage_services(overlay):
    _, objects = overlay
    (policy,) = objects_of(objects, "NetworkPolicy").values()
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "stage"}
    rule, metrics = policy["spec"]["ingress"]
    assert rule == {"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": ORCHESTRATOR.name}}}]}
    assert metrics == {"ports": [{"port": "metrics", "protocol": "TCP"}]}   # Prometheus, nothing else
    for name, deployment in objects_of(objects, "Deployment").items():
        component = deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        assert (component == "stage") == (name != ORCHESTRATOR.name)


def test_the_orchestrator_keeps_its_jobs_on_a_volume_and_reads_the_pipeline(overlay):
    _, objects = overlay
    deployment = objects_of(objects, "Deployment")[ORCHESTRATOR.name]
    main = container(deployment)
    assert main["command"] == ORCHESTRATOR.command
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    claims = objects_of(objects, "PersistentVolumeClaim")
    assert volumes[mounts[JOB_STORE]]["persistentVolumeClaim"]["claimName"] in claims
    config = volumes[mounts[str(PIPELINE.rsplit("/", 1)[0])]]["configMap"]["name"]
    assert config in objects_of(objects, "ConfigMap")


def test_the_cpu_overlay_runs_only_the_classical_service_and_the_orchestrator():
    objects = render(OVERLAYS / "cpu")
    assert set(objects_of(objects, "Deployment")) == {classical().name, ORCHESTRATOR.name}
    assert "nvidia.com/gpu" not in yaml.safe_dump_all(objects)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl to compare with")
@pytest.mark.parametrize("name", ["gpu", "cpu"])
def test_the_minimal_renderer_agrees_with_kubectl(name):
    """Where kubectl is missing the tests render with tests/deploy/kustomize.py instead."""
    def keyed(objects):
        found = {}
        for obj in copy.deepcopy(objects):
            if obj["kind"] == "ConfigMap":
                obj["metadata"]["name"] = obj["metadata"]["name"].rsplit("-", 1)[0]
            for volume in obj.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", []):
                if "configMap" in volume:
                    volume["configMap"]["name"] = volume["configMap"]["name"].rsplit("-", 1)[0]
            found[(obj["kind"], obj["metadata"]["name"])] = obj
        return found
    assert keyed(render_minimal(OVERLAYS / name)) == keyed(render_kubectl(OVERLAYS / name))


def test_the_job_api_token_comes_from_a_secret_and_is_required():
    objects = render(OVERLAYS / "gpu")
    main = container(objects_of(objects, "Deployment")[ORCHESTRATOR.name])
    (token,) = [e for e in main["env"] if e["name"] == "RESTORATION_TOKEN"]
    ref = token["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "jobs-token" and ref["key"] == "token"
    assert not ref.get("optional", False), "a missing Secret must keep the job API down"
    assert "--metrics-port" in main["command"]
    # TLS when its Secret is given; probes on the plaintext health port either way
    pod = objects_of(objects, "Deployment")[ORCHESTRATOR.name]["spec"]["template"]["spec"]
    (tls,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert tls["secret"] == {"secretName": "jobs-tls", "optional": True}
    mounted = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    assert main["command"][main["command"].index("--tls-dir") + 1] == mounted["tls"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert main[probe]["grpc"]["port"] == ORCHESTRATOR.health_port


def test_no_autoscaled_deployment_sets_replicas_and_every_metric_is_exported(overlay):
    from orchestrator.jobs.service import Metrics
    from services.stagekit.server import StageMetrics
    exported = {m.name for registry in (StageMetrics().registry, Metrics().registry)
                for m in registry.collect()}
    _, objects = overlay
    deployments = objects_of(objects, "Deployment")
    for scaler in objects_of(objects, "HorizontalPodAutoscaler").values():
        target = deployments[scaler["spec"]["scaleTargetRef"]["name"]]
        assert "replicas" not in target["spec"], target["metadata"]["name"]
        for metric in scaler["spec"]["metrics"]:
            if metric["type"] != "Resource":
                name = metric[metric["type"].lower()]["metric"]["name"]
                assert name in exported, f"{name}: no code exports it"
                port = next(p for p in container(target)["ports"] if p["name"] == "metrics")
                annotations = target["spec"]["template"]["metadata"]["annotations"]
                assert annotations["prometheus.io/port"] == str(port["containerPort"])
                assert "--metrics-port" in container(target)["command"]


def test_probes_wait_long_enough_and_stages_drain_before_they_are_killed(overlay):
    _, objects = overlay
    for name, deployment in objects_of(objects, "Deployment").items():
        main = container(deployment)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert main[probe]["timeoutSeconds"] >= 5, (name, probe)
        if name != ORCHESTRATOR.name:
            pause = main["lifecycle"]["preStop"]["sleep"]["seconds"]
            grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            assert grace >= pause + 30   # the stage server's default --drain-timeout


def test_the_weights_claim_takes_a_storage_class(monkeypatch):
    from deploy import generate, stack
    assert "storageClassName" not in yaml.safe_load(generate.weights_claim())["spec"]
    monkeypatch.setattr(stack, "WEIGHTS_STORAGE_CLASS", "nfs-client")
    assert yaml.safe_load(generate.weights_claim())["spec"]["storageClassName"] == "nfs-client"
