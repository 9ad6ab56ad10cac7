"""How a step of the pipeline reaches its stage: in process, or on one of a stage's
replicas over gRPC (or Triton), with retries that move a failed clip to the next replica
and an outage window during which a stage that no replica serves is waited for."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from fractions import Fraction

from services.stagekit import ClipInfo, Stage
from services.stagekit.device import precision_name

from ..errors import UserError
from . import registry
from .endpoints import endpoints, rpc_reason
from .plan import Plan
from .sizing import NATIVE_FACTORS
from .specs import DEINTERLACE, StageSpec
from .transforms import Resample

log = logging.getLogger("restoration.orchestrator")


class LocalRunner:
    def __init__(self, stage: Stage):
        self.stage = stage

    def run(self, info: ClipInfo, frames):
        return self.stage.run(info, frames)


class ClipFailed(UserError):
    """One clip could not go through one stage; a rerun may send it to another replica.
    ``transient``: the stage was out of reach or refused it (a restart, a drain, busy), not
    the clip's fault; ``final``: retrying cannot help (out for the whole outage window)."""

    def __init__(self, stage: str, clip_id: str, reason: str, final: bool = False,
                 transient: bool = False):
        super().__init__(f"stage {stage}: {clip_id}: {reason}")
        self.stage, self.clip_id, self.reason = stage, clip_id, reason
        self.final, self.transient = final, transient

    @classmethod
    def of(cls, stage: str, clip_id: str, exc: Exception) -> "ClipFailed":
        return cls(stage, clip_id, rpc_reason(exc), transient=_unreachable(exc))


def _unreachable(exc: Exception) -> bool:
    """A gRPC failure that says the replica was gone or refused new work, not that the clip
    failed in it."""
    import grpc
    code = exc.code() if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)) else None
    return code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


STAGE_OUTAGE = 600.0      # seconds a stage no replica serves is waited for (a restart, a rollout)
CONNECT_WAIT = 1.0        # seconds one replica is given to connect per round
BACKOFF = (0.5, 10.0)     # seconds between rounds over the replicas: first, doubling to most
DOWN_FOR = 30.0           # seconds a replica that did not answer is tried last
CLIP_DEADLINE = 3600.0    # seconds one clip may take in one stage service


class RemoteRunner:
    """A stage served by one or more replicas: clips go round robin, a clip retried after a
    failure starts at the next replica, a replica that does not answer is passed over; when
    none answers, they are tried again with backoff for ``outage`` seconds before the clip
    fails for good."""

    def __init__(self, spec: StageSpec, attempts: dict[str, int] | None = None,
                 deadline: float = CLIP_DEADLINE, outage: float = STAGE_OUTAGE,
                 stop: threading.Event | None = None):
        from deploy.triton.client import client_for
        self.spec = spec
        self.outage = outage
        self.stop = stop or threading.Event()   # the job is stopping: waiting is over
        self.attempts = attempts if attempts is not None else {}
        self.replicas = endpoints(spec.endpoint)
        self.clients = [client_for(e, timeout=deadline) for e in self.replicas]
        self.down_until = [0.0] * len(self.replicas)

    def run(self, info: ClipInfo, frames):
        replica = self._pick(info.clip_id)
        client = self.clients[replica]
        name = f"{self.spec.task}/{self.spec.model} at {self.replicas[replica]}"
        try:
            out_info, out_frames = client.process(info, frames, task=self.spec.task,
                                                  model=self.spec.model)
        except Exception as exc:
            raise ClipFailed.of(name, info.clip_id, exc) from None
        return out_info, _failing_as(name, info.clip_id, out_frames)

    def _pick(self, clip_id: str) -> int:
        first = _clip_number(clip_id) + self.attempts.get(clip_id, 0)
        order = [(first + i) % len(self.clients) for i in range(len(self.clients))]
        order.sort(key=lambda r: self.down_until[r] > time.monotonic())  # stable: answering first
        give_up = time.monotonic() + self.outage
        pause = BACKOFF[0]
        while True:
            for replica in order:
                if _ready(self.clients[replica]):
                    return replica
                self.down_until[replica] = time.monotonic() + DOWN_FOR
            left = give_up - time.monotonic()
            if left <= 0:
                break
            log.warning("stage %s/%s: no replica answers (%s); waiting up to %.0f s more",
                        self.spec.task, self.spec.model, ", ".join(self.replicas), left)
            if self.stop.wait(min(pause, left)):
                break
            pause = min(pause * 2, BACKOFF[1])
        where = ", ".join(self.replicas)
        raise ClipFailed(f"{self.spec.task}/{self.spec.model}", clip_id,
                         f"no replica answers ({where}) for {self.outage:.0f} s", final=True)


def _ready(client) -> bool:
    """Whether the replica connects within CONNECT_WAIT and says it is SERVING (one that
    drains answers NOT_SERVING: new clips go elsewhere or wait for its successor)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    channel = getattr(client, "channel", None)
    if channel is None:
        return True  # a client without a gRPC channel of its own reports failures in process()
    try:
        grpc.channel_ready_future(channel).result(timeout=CONNECT_WAIT)
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=CONNECT_WAIT)
    except grpc.FutureTimeoutError:
        return False
    except grpc.RpcError as exc:
        return exc.code() == grpc.StatusCode.UNIMPLEMENTED   # no health service: assume so
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _clip_number(clip_id: str) -> int:
    digits = "".join(ch for ch in clip_id if ch.isdigit())
    return int(digits) if digits else 0


def _failing_as(name: str, clip_id: str, frames):
    try:
        yield from frames
    except Exception as exc:
        raise ClipFailed.of(name, clip_id, exc) from None


@dataclass
class Step:
    """One thread's work: a runner and how it sets each clip's params."""

    name: str
    runner: object
    params: dict
    spec: StageSpec | None = None

    def clip_params(self, info: ClipInfo, plan: Plan) -> dict:
        params = dict(self.params)
        if self.spec is not None and self.spec.task == "interpolate" and "factor" not in params:
            params["factor"] = str(max(1, round(plan.target_fps / info.fps)))
        return params

    def rate_factor(self, fps: Fraction, plan: Plan) -> int:
        """How many frames the step hands on per frame it takes, for clips at ``fps``."""
        task = self.spec.task if self.spec is not None else ""
        if task == DEINTERLACE:
            return 1 if self.params.get("field_order") == "progressive" else 2
        if task == "interpolate":
            info = ClipInfo("", 1, 1, fps)
            factor = self.clip_params(info, plan)["factor"].strip()
            return int(factor) if factor.isdigit() else 1   # a bad one: the stage says so
        return 1

    def passes_through(self, params: dict) -> bool:
        """Whether the stage would hand the clip back unchanged (interpolation by 1, a
        tape already at the target rate once deinterlaced): its frames then skip it, and
        a remote one is not sent them at all."""
        return (self.spec is not None and self.spec.task == "interpolate"
                and params.get("factor", "").strip() == "1")


def frames_out(steps: list[Step], plan: Plan) -> dict[str, int]:
    """The frames each step will hand on over the whole job: the source's frames times the
    frame-rate factors of the steps up to it (the output's are the last step's)."""
    count, fps, out = plan.source.frame_count or 0, plan.source.fps, {}
    for step in steps:
        factor = step.rate_factor(fps, plan)
        count, fps = count * factor, fps * factor
        out[step.name] = count
    return out


def local_runner(spec: StageSpec, device: str, precision: str | None) -> LocalRunner:
    """The in-process stage of ``spec``; a neural one says where and in which precision it
    runs (what a job asked, or what `auto` chose)."""
    stage = registry.create_local(spec.task, spec.model, device, precision)
    if getattr(stage, "dtype", None) is not None:
        log.info("%s/%s: in-process on %s in %s", spec.task, spec.model, stage.device,
                 precision_name(stage.dtype))
    return LocalRunner(stage)


def build_steps(plan: Plan, device: str = "auto", attempts: dict[str, int] | None = None,
                outage: float = STAGE_OUTAGE, stop: threading.Event | None = None,
                precision: str | None = None) -> list[Step]:
    steps: list[Step] = []
    resampled = plan.working_size == (plan.source.width, plan.source.height)
    if not plan.source.interlaced and not resampled:
        steps.append(Step("resample", LocalRunner(Resample(*plan.working_size)), {}))
        resampled = True
    for spec in plan.stages:
        params = dict(spec.params)
        if spec.task == DEINTERLACE:
            params.setdefault("field_order", plan.source.field_order)
            if spec.model == "classical" and not resampled:
                # resampled in floating point as it comes out, before it is rounded
                params.setdefault("size", "%dx%d" % plan.working_size)
        if spec.task == "superres" and spec.model in NATIVE_FACTORS:
            params["scale"] = str(plan.sizing.model_factor)
        runner = (local_runner(spec, device, precision) if spec.endpoint == "local"
                  else RemoteRunner(spec, attempts, outage=outage, stop=stop))
        steps.append(Step(f"{spec.task}/{spec.model}", runner, params, spec))
        if spec.task == DEINTERLACE and not resampled:
            steps.append(Step("resample", LocalRunner(Resample(*plan.working_size)), {}))
            resampled = True
        if spec.task == "superres" and plan.sizing.model_factor != plan.sizing.factor:
            # a fixed-factor model's frames, resized down to the size the plan chose
            steps.append(Step("resize", LocalRunner(Resample(*plan.output_size)), {}))
    return steps
