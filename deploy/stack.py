"""The deployed services: one table, the single source of every port, image and command.

docker-compose.yml, the Kubernetes manifests, the pipeline files and the Triton model
repository are written from it by ``python -m deploy.generate``; tests/deploy checks that
the files on disk are what it writes and that they agree with each other and with the
Dockerfiles.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VERSION = "0.1.0"
REGISTRY = "restoration"
WEIGHTS = "/weights"            # $RESTORATION_WEIGHTS inside every container
JOB_STORE = "/var/lib/restoration"
PIPELINE = "/etc/restoration/pipeline.yaml"
UID = 10001                     # the non-root user every image runs as
METRICS_OFFSET = 1000           # a service's Prometheus port: its gRPC port + this
# The weights claim's storage class (Kubernetes): one offering ReadWriteMany, e.g. "nfs-client",
# "efs-sc", "azurefile"; None uses the cluster's default class.
WEIGHTS_STORAGE_CLASS: str | None = None

# The video pipeline's tasks in the order a restoration runs them (orchestrator.registry.TASKS).
VIDEO_TASKS = ("deinterlace", "analog", "outpaint", "deblur", "colorize", "denoise", "superres", "interpolate")


@dataclass(frozen=True)
class Service:
    model: str
    port: int
    tasks: tuple[str, ...]
    gpu: bool = True
    memory: str = "16Gi"        # what one replica asks of its node
    cpu: str = "4"
    image_pipeline: bool = False   # a model of the image pipeline: compose profile "image"

    @property
    def name(self) -> str:
        return self.model

    @property
    def image(self) -> str:
        return f"{REGISTRY}/{self.model}:{VERSION}"

    @property
    def listen(self) -> str:
        return f"0.0.0.0:{self.port}"

    @property
    def metrics_port(self) -> int:
        return self.port + METRICS_OFFSET

    @property
    def command(self) -> list[str]:
        return ["python", "-m", f"services.{self.model}", "--listen", self.listen,
                "--metrics-port", str(self.metrics_port)]

    @property
    def dockerfile(self) -> Path:
        return ROOT / "services" / self.model / "Dockerfile"

    @property
    def endpoint(self) -> str:
        return f"grpc://{self.name}:{self.port}"

    def present(self) -> bool:
        """Its code is in this checkout (the image-pipeline models arrive with their issues)."""
        return (ROOT / "services" / self.model / "__main__.py").is_file()


@dataclass(frozen=True)
class Orchestrator:
    name: str = "orchestrator"
    port: int = 50050
    image: str = f"{REGISTRY}/orchestrator:{VERSION}"
    dockerfile: Path = ROOT / "deploy" / "orchestrator.Dockerfile"

    health_port: int = 50049    # gRPC health alone, plaintext (probes), beside a TLS job API
    tls_dir: str = "/etc/restoration-tls"   # TLS when a certificate is there (a Secret)

    @property
    def metrics_port(self) -> int:
        return self.port + METRICS_OFFSET

    @property
    def command(self) -> list[str]:
        return ["orchestrator", "serve", "--listen", f"0.0.0.0:{self.port}",
                "--pipeline", PIPELINE, "--store", JOB_STORE,
                "--metrics-port", str(self.metrics_port),
                "--health-listen", f"0.0.0.0:{self.health_port}", "--tls-dir", self.tls_dir]


ORCHESTRATOR = Orchestrator()

SERVICES = (
    Service("classical", 50051, VIDEO_TASKS, gpu=False, memory="4Gi", cpu="4"),
    Service("tape", 50052, ("analog",)),
    Service("propainter", 50053, ("outpaint",)),
    Service("tcvc", 50054, ("colorize",)),
    Service("mmprnn", 50055, ("deblur",)),
    Service("rvrt", 50056, ("denoise",)),
    Service("psrt", 50057, ("superres",)),
    Service("sfadacof", 50058, ("interpolate",)),
    # The image pipeline's models: their ports are kept for them.
    Service("uformer", 50059, ("deblur",), image_pipeline=True),
    Service("ddcolor", 50060, ("colorize",), image_pipeline=True),
    Service("mat", 50061, ("inpaint",), image_pipeline=True),
    Service("diffbir", 50062, ("superres",), image_pipeline=True),
)


def pipeline_services(gpu: bool = True) -> list[Service]:
    """The services the pipeline file names: what the orchestrator needs running."""
    models = {stage["model"] for stage in video_pipeline(gpu)}
    return [s for s in deployed() if s.model in models]


def deployed() -> list[Service]:
    return [s for s in SERVICES if s.present()]


def by_model(model: str) -> Service:
    for service in SERVICES:
        if service.model == model:
            return service
    raise KeyError(f"no service '{model}' in deploy/stack.py")


def neural() -> list[Service]:
    return [s for s in deployed() if s.gpu]


def classical() -> Service:
    return by_model("classical")


def video_pipeline(gpu: bool) -> list[dict]:
    """The pipeline file's stages: each task on its neural model's service (GPU), or on
    the classical service (CPU only)."""
    stages = []
    video_models = [s for s in neural() if not s.image_pipeline]
    for task in VIDEO_TASKS:
        service = next((s for s in video_models if task in s.tasks), None) if gpu else None
        service = service or classical()
        stages.append({"task": task, "model": service.model, "endpoint": service.endpoint})
    return stages
