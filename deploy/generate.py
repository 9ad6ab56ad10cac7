"""``python -m deploy.generate [--check]``: write every file derived from deploy/stack.py.

They are: each service's Dockerfile and the orchestrator's, docker-compose.yml, the
Kubernetes manifests of the services (deploy/k8s/base/classical.yaml, deploy/k8s/models/),
the two pipeline files (CPU in deploy/k8s/base, GPU in deploy/k8s/overlays/gpu; compose
mounts the GPU one) and the Triton model repository. ``--check`` writes nothing and exits
1 naming the files that differ from what would be written.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from . import stack
from .lock import locks
from .stack import ORCHESTRATOR, ROOT, UID, WEIGHTS, Service

INFLIGHT_METRIC = "restoration_stage_inflight_clips"   # the HPAs' metric (StageMetrics)
GENERATED = "# Written by `python -m deploy.generate` from deploy/stack.py: edit that, not this file.\n"
CUDA_BASE = "nvidia/cuda:13.0.2-runtime-ubuntu24.04"
PYTHON_BASE = "python:3.11.14-slim-bookworm"
UV_IMAGE = "ghcr.io/astral-sh/uv:0.13.8"
PYTHON_VERSION = "3.11.14"
K8S = ROOT / "deploy" / "k8s"
TRITON = ROOT / "deploy" / "triton" / "models"
GPU_PIPELINE = K8S / "overlays" / "gpu" / "pipeline.yaml"
DRAIN = "45s"   # preStop's 5 s, then a stage server drains its clips for up to 30 s after SIGTERM
PRE_STOP_S = 5  # seconds a stopping pod keeps serving while the endpoints forget it
PROBE_TIMEOUT_S = 5   # health has threads of its own, but a loaded node answers slowly
PUBLISH = "${RESTORATION_PUBLISH:-127.0.0.1}"   # the job API: this host only, unless asked
CPU_PIPELINE = K8S / "base" / "pipeline.yaml"


# --- Dockerfiles --------------------------------------------------------------------------

def _python_setup(gpu: bool) -> list[str]:
    """The interpreter and the empty virtualenv at /opt/venv."""
    if not gpu:
        return [f"FROM {PYTHON_BASE}", "RUN python -m venv /opt/venv"]
    return [
        f"FROM {UV_IMAGE} AS uv", "",
        f"FROM {CUDA_BASE}",
        "# torch's wheels carry their own CUDA libraries; the base image brings what the NVIDIA",
        "# container runtime looks for and the driver forward-compatibility libraries.",
        "# Ubuntu has no Python 3.11: uv installs a standalone CPython, the version the locks are for.",
        "COPY --from=uv /uv /usr/local/bin/uv",
        "ENV UV_PYTHON_INSTALL_DIR=/opt/python",
        f"RUN uv python install {PYTHON_VERSION} \\",
        f"    && \"$(uv python find {PYTHON_VERSION})\" -m venv /opt/venv",
    ]


def _common_head(gpu: bool, lock: str) -> list[str]:
    return [
        *_python_setup(gpu),
        "ENV PATH=/opt/venv/bin:$PATH PYTHONPATH=/app PYTHONDONTWRITEBYTECODE=1 \\",
        f"    PYTHONUNBUFFERED=1 RESTORATION_WEIGHTS={WEIGHTS}",
        f"COPY {lock} /tmp/requirements.lock",
        "RUN pip install --no-cache-dir --no-deps -r /tmp/requirements.lock \\",
        "    && rm /tmp/requirements.lock",
        f"RUN useradd --uid {UID} --user-group --create-home --shell /usr/sbin/nologin restoration \\",
        f"    && mkdir -p {WEIGHTS} && chown {UID}:{UID} {WEIGHTS}",
        "WORKDIR /app",
    ]


def _health(port: int, start_period: str) -> list[str]:
    return [f"HEALTHCHECK --interval=15s --timeout=5s --start-period={start_period} --retries=3 \\",
            f"    CMD [\"python\", \"-m\", \"deploy.grpc_health\", \"127.0.0.1:{port}\"]"]


def _json_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def dockerfile(service: Service) -> str:
    folder = f"services/{service.model}"
    kind = "GPU (CUDA)" if service.gpu else "CPU"
    lines = [
        f"# The {service.model} stage service, {kind}. Build from the repository root:",
        f"#   docker build -f {folder}/Dockerfile -t {service.image} .",
        *_common_head(service.gpu, f"{folder}/requirements.lock"),
        "COPY proto proto",
        "COPY services/__init__.py services/",
        "COPY services/stagekit services/stagekit",
        f"COPY {folder} {folder}",
        "COPY deploy/__init__.py deploy/grpc_health.py deploy/",
        f"USER {UID}",
        f"VOLUME [\"{WEIGHTS}\"]",
        f"EXPOSE {service.port}",
        *_health(service.port, "300s" if service.gpu else "60s"),
        f"CMD {_json_list(service.command)}",
    ]
    return GENERATED + "\n".join(lines) + "\n"


def orchestrator_dockerfile() -> str:
    lines = [
        "# The orchestrator: job service, `orchestrator weights list`, classical stages in-process",
        "# (each model's own image pulls its weights). Build from the repository root:",
        f"#   docker build -f deploy/orchestrator.Dockerfile -t {ORCHESTRATOR.image} .",
        *_common_head(False, "deploy/orchestrator.requirements.lock"),
        "COPY pyproject.toml ./",
        "COPY proto proto",
        "COPY services services",
        "COPY orchestrator orchestrator",
        "COPY deploy deploy",
        "# Editable, so the package still finds proto/ beside it; setuptools comes with the lock.",
        "RUN pip install --no-cache-dir --no-deps --no-build-isolation -e . \\",
        f"    && mkdir -p {stack.JOB_STORE} && chown {UID}:{UID} {stack.JOB_STORE}",
        f"USER {UID}",
        f"VOLUME [\"{stack.JOB_STORE}\", \"{WEIGHTS}\"]",
        f"EXPOSE {ORCHESTRATOR.port}",
        *_health(ORCHESTRATOR.port, "60s"),
        f"CMD {_json_list(ORCHESTRATOR.command)}",
    ]
    return GENERATED + "\n".join(lines) + "\n"


# --- pipeline files -----------------------------------------------------------------------

def pipeline(gpu: bool) -> str:
    where = ("each task on its model's service" if gpu
             else "every task on the classical service")
    return (GENERATED + f"# The orchestrator service's pipeline: {where}.\n"
            + yaml.safe_dump({"stages": stack.video_pipeline(gpu)}, sort_keys=False))


# --- docker-compose -----------------------------------------------------------------------

def _has_weights(service: Service) -> bool:
    return (ROOT / "services" / service.model / "weights.json").is_file()


# --- pulling weights: each model in its own image (where torch and its loader are), so a
# file is verified by loading it, MAT's is converted, and one model's missing weights keep
# only that model from starting.

def pull_name(service: Service) -> str:
    return f"weights-{service.model}"


def pull_command(service: Service) -> list[str]:
    return ["python", "-m", "services.stagekit.fetch", service.model]


def _compose_pull(service: Service, profiles: list[str]) -> dict:
    entry = {
        "image": service.image,
        "build": {"context": ".", "dockerfile": str(service.dockerfile.relative_to(ROOT))},
        "command": pull_command(service),
        "environment": {"RESTORATION_WEIGHTS": WEIGHTS},
        "volumes": [f"weights:{WEIGHTS}"],
        "restart": "no",
    }
    if profiles:
        entry["profiles"] = profiles
    return entry


def _profile(service: Service, pipeline: set[str]) -> list[str]:
    """Compose profiles: none (started by default) for what the pipeline names."""
    if service.model in pipeline:
        return []
    return ["image"] if service.image_pipeline else [service.model]


def _compose_service(service: Service, profiles: list[str]) -> dict:
    entry = {
        "image": service.image,
        "build": {"context": ".", "dockerfile": str(service.dockerfile.relative_to(ROOT))},
        "command": service.command,
        "environment": {"RESTORATION_WEIGHTS": WEIGHTS},
        "expose": [str(service.port)],
        # published on loopback only: for calling one service from the host (README)
        "ports": [f"127.0.0.1:{service.port}:{service.port}"],
        "restart": "unless-stopped",
        "stop_grace_period": DRAIN,
    }
    if profiles:
        entry["profiles"] = profiles
    if service.gpu:
        entry["volumes"] = [f"weights:{WEIGHTS}:ro"]
        if _has_weights(service):
            entry["depends_on"] = {pull_name(service): {"condition": "service_completed_successfully"}}
        variable = f"RESTORATION_GPU_{service.model.upper()}"
        entry["deploy"] = {"resources": {"reservations": {"devices": [
            {"driver": "nvidia", "device_ids": [f"${{{variable}:-0}}"], "capabilities": ["gpu"]}]}}}
    return entry


def compose() -> str:
    needed = stack.pipeline_services(gpu=True)
    models = {s.model for s in needed}
    services = {pull_name(s): _compose_pull(s, _profile(s, models))
                for s in stack.neural() if _has_weights(s)}
    for service in stack.deployed():
        services[service.name] = _compose_service(
            service, _profile(service, models))
    services[ORCHESTRATOR.name] = {
        "image": ORCHESTRATOR.image,
        "build": {"context": ".", "dockerfile": str(ORCHESTRATOR.dockerfile.relative_to(ROOT))},
        "command": ORCHESTRATOR.command,
        # an empty token: the job API is open, so it is published on this host only
        "environment": {"RESTORATION_WEIGHTS": WEIGHTS, "RESTORATION_TOKEN": "${RESTORATION_TOKEN:-}"},
        "ports": [f"{PUBLISH}:{ORCHESTRATOR.port}:{ORCHESTRATOR.port}"],
        "volumes": [f"jobs:{stack.JOB_STORE}",
                    f"./{GPU_PIPELINE.relative_to(ROOT)}:{stack.PIPELINE}:ro"],
        # a model kept down by its weights does not keep the orchestrator down
        "depends_on": {s.name: {"condition": "service_healthy", **({"required": False} if s.gpu else {})}
                       for s in needed},
        "restart": "unless-stopped",
        "stop_grace_period": DRAIN,
    }
    document = {"name": "restoration", "services": services,
                "volumes": {"weights": {}, "jobs": {}}}
    return (GENERATED + "# One GPU host: `docker compose up -d` starts the video pipeline's services and the\n"
            "# orchestrator (`--profile image` adds the image models); RESTORATION_GPU_<MODEL>=N puts a\n"
            "# model on GPU N; RESTORATION_TOKEN=... RESTORATION_PUBLISH=0.0.0.0 opens the job API to others.\n"
            + yaml.safe_dump(document, sort_keys=False, width=120))


# --- Kubernetes ---------------------------------------------------------------------------

def labels(name: str, component: str, accelerator: str | None = None) -> dict:
    found = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": component,
             "app.kubernetes.io/part-of": "restoration"}
    if accelerator:
        found["restoration/accelerator"] = accelerator
    return found


def _container_security() -> dict:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}}


def pod_security() -> dict:
    return {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _probes(port: int, gpu: bool) -> dict:
    return {
        # loading a checkpoint onto a GPU can take minutes: liveness waits for startup
        "startupProbe": {"grpc": {"port": port}, "periodSeconds": 10,
                         "timeoutSeconds": PROBE_TIMEOUT_S, "failureThreshold": 60 if gpu else 12},
        "readinessProbe": {"grpc": {"port": port}, "periodSeconds": 10,
                           "timeoutSeconds": PROBE_TIMEOUT_S},
        "livenessProbe": {"grpc": {"port": port}, "periodSeconds": 20,
                          "timeoutSeconds": PROBE_TIMEOUT_S, "failureThreshold": 3},
    }


def _weights_init(service: Service) -> dict:
    # verifying loads the checkpoint into its network: the memory the model itself asks for
    return {
        "name": "weights",
        "image": service.image,
        "command": pull_command(service),
        "env": [{"name": "RESTORATION_WEIGHTS", "value": WEIGHTS}, {"name": "HOME", "value": "/tmp"}],
        "volumeMounts": [{"name": "weights", "mountPath": WEIGHTS}, {"name": "tmp", "mountPath": "/tmp"}],
        "resources": {"requests": {"cpu": "1", "memory": service.memory},
                      "limits": {"memory": service.memory}},
        "securityContext": _container_security(),
    }


def _stage_container(service: Service) -> dict:
    limits = {"memory": service.memory}
    if service.gpu:
        limits["nvidia.com/gpu"] = 1
    mounts = [{"name": "tmp", "mountPath": "/tmp"}]
    if service.gpu:
        mounts.append({"name": "weights", "mountPath": WEIGHTS, "readOnly": True})
    return {
        "name": service.name,
        "image": service.image,
        "command": service.command,
        "ports": [{"name": "grpc", "containerPort": service.port, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": service.metrics_port, "protocol": "TCP"}],
        "env": [{"name": "RESTORATION_WEIGHTS", "value": WEIGHTS}, {"name": "HOME", "value": "/tmp"}],
        **_probes(service.port, service.gpu),
        # SIGTERM drains (no new clips, NOT_SERVING, the clips in flight finish); the pause
        # before it lets the endpoints drop this pod first
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_S}}},
        "resources": {"requests": {"cpu": service.cpu, "memory": service.memory}, "limits": limits},
        "volumeMounts": mounts,
        "securityContext": _container_security(),
    }


def _scraped(port: int) -> dict:
    """The annotations by which a Prometheus with the usual pod discovery finds /metrics."""
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
            "prometheus.io/path": "/metrics"}


def _deployment(service: Service) -> dict:
    accelerator = "gpu" if service.gpu else "cpu"
    pod = {
        "securityContext": pod_security(),
        "terminationGracePeriodSeconds": int(DRAIN.removesuffix("s")),
        "containers": [_stage_container(service)],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if service.gpu:
        if _has_weights(service):
            pod["initContainers"] = [_weights_init(service)]
        pod["volumes"].append({"name": "weights", "persistentVolumeClaim": {"claimName": "weights"}})
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": service.name, "labels": labels(service.name, "stage", accelerator)},
        # no `replicas`: the HPA owns the count, an apply must not reset it
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": service.name}},
            # no surge: a second pod would wait for a GPU the first still holds
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
            "template": {"metadata": {"labels": labels(service.name, "stage", accelerator),
                                      "annotations": _scraped(service.metrics_port)},
                         "spec": pod},
        },
    }


def _service(service: Service) -> dict:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": service.name, "labels": labels(service.name, "stage")},
        "spec": {
            # headless: the orchestrator's gRPC channel resolves every replica
            "clusterIP": "None",
            "selector": {"app.kubernetes.io/name": service.name},
            "ports": [{"name": "grpc", "port": service.port, "targetPort": "grpc",
                       "protocol": "TCP", "appProtocol": "grpc"}],
        },
    }


def _disruption_budget(service: Service) -> dict:
    return {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": service.name, "labels": labels(service.name, "stage")},
        "spec": {"maxUnavailable": 1,
                 "selector": {"matchLabels": {"app.kubernetes.io/name": service.name}}},
    }


def _autoscaler(service: Service) -> dict:
    if service.gpu:
        # clips each replica is processing, from its own /metrics (services/stagekit/server.py),
        # served to the HPA by a metrics adapter (deploy/README.md)
        metric = {"type": "Pods", "pods": {
            "metric": {"name": INFLIGHT_METRIC},
            "target": {"type": "AverageValue", "averageValue": "2"}}}
        most = 4
    else:
        metric = {"type": "Resource", "resource": {
            "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
        most = 8
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": service.name, "labels": labels(service.name, "stage")},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": service.name},
            "minReplicas": 1, "maxReplicas": most, "metrics": [metric],
            # a new GPU replica loads its checkpoint for minutes: do not flap
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 600}},
        },
    }


def k8s_service(service: Service) -> str:
    objects = [_deployment(service), _service(service), _disruption_budget(service), _autoscaler(service)]
    return GENERATED + yaml.safe_dump_all(objects, sort_keys=False, width=120)


def weights_claim() -> str:
    claim = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "weights", "labels": labels("weights", "storage")},
        # every model's pods mount it, on whichever GPU node they land
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "50Gi"}}},
    }
    if stack.WEIGHTS_STORAGE_CLASS is not None:
        claim["spec"]["storageClassName"] = stack.WEIGHTS_STORAGE_CLASS
    return GENERATED + yaml.safe_dump(claim, sort_keys=False)


def models_kustomization() -> str:
    document = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                "resources": ["weights.yaml", *[f"{s.model}.yaml" for s in stack.neural()]]}
    return GENERATED + yaml.safe_dump(document, sort_keys=False)


# --- Triton -------------------------------------------------------------------------------

TRITON_MODEL_PY = GENERATED + '''"""Triton's Python backend loads this file; the stage adapter is deploy/triton/backend.py."""
import os
import sys

# The backend's embedded interpreter ignores $PYTHONPATH, which the image and the tests set.
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
               if p and p not in sys.path]

from deploy.triton.backend import TritonPythonModel  # noqa: E402,F401
'''


def triton_models() -> dict[str, tuple[Service, str]]:
    """Triton model name -> (service, task): each neural model, and each classical task."""
    models = {s.model: (s, s.tasks[0]) for s in stack.neural()}
    models.update({f"classical_{task}": (stack.classical(), task) for task in stack.classical().tasks})
    return models


def triton_config(name: str, service: Service, task: str) -> str:
    kind = "KIND_GPU" if service.gpu else "KIND_CPU"
    return f"""{GENERATED}# One clip = one sequence of ClipChunk requests (deploy/triton/__init__.py).
name: "{name}"
backend: "python"
max_batch_size: 0
input [
  {{ name: "CHUNK" data_type: TYPE_STRING dims: [ 1 ] }}
]
output [
  {{ name: "CHUNKS" data_type: TYPE_STRING dims: [ -1 ] }}
]
sequence_batching {{
  max_sequence_idle_microseconds: 600000000
  control_input [
    {{ name: "START" control [ {{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "END" control [ {{ kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 }} ] }}
  ]
}}
instance_group [ {{ kind: {kind} count: {1 if service.gpu else 2} }} ]
parameters [
  {{ key: "model" value: {{ string_value: "{service.model}" }} }},
  {{ key: "task" value: {{ string_value: "{task}" }} }}
]
"""


# --- all of it ----------------------------------------------------------------------------

def outputs() -> dict[Path, str]:
    files = {s.dockerfile: dockerfile(s) for s in stack.deployed()}
    files[ORCHESTRATOR.dockerfile] = orchestrator_dockerfile()
    files[ROOT / "docker-compose.yml"] = compose()
    files[K8S / "base" / "classical.yaml"] = k8s_service(stack.classical())
    files[CPU_PIPELINE] = pipeline(gpu=False)
    files[GPU_PIPELINE] = pipeline(gpu=True)
    files[K8S / "models" / "weights.yaml"] = weights_claim()
    files[K8S / "models" / "kustomization.yaml"] = models_kustomization()
    for service in stack.neural():
        files[K8S / "models" / f"{service.model}.yaml"] = k8s_service(service)
    for name, (service, task) in triton_models().items():
        files[TRITON / name / "config.pbtxt"] = triton_config(name, service, task)
        files[TRITON / name / "1" / "model.py"] = TRITON_MODEL_PY
    return files


def stale() -> list[Path]:
    """Files whose content differs from what would be written, and generated files left
    behind by a service no longer in the table."""
    files = outputs()
    differ = [p for p, text in files.items() if not p.is_file() or p.read_text() != text]
    leftovers = [p for p in _generated_on_disk() if p not in files]
    return sorted(differ + leftovers)


def _generated_on_disk() -> list[Path]:
    candidates = [*(K8S / "models").glob("*.yaml"), *TRITON.glob("*/config.pbtxt"),
                  *TRITON.glob("*/1/model.py")]
    return [p for p in candidates if GENERATED.strip() in p.read_text()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; list stale files")
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale()
        for path in out_of_date:
            print(path.relative_to(ROOT))
        return 1 if out_of_date else 0
    for path, text in outputs().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    missing = [lock for lock in locks() if not lock.is_file()]
    for lock in missing:
        print(f"missing {lock.relative_to(ROOT)}: run python -m deploy.lock", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
