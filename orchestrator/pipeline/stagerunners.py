"""How a step of the pipeline reaches its stage: in process, or on one of a stage's
replicas over gRPC (or Triton), with retries that move a failed clip to the next replica."""
from __future__ import annotations

import time
from dataclasses import dataclass

from services.stagekit import ClipInfo, Stage

from ..errors import UserError
from . import registry
from .endpoints import endpoints, rpc_reason
from .plan import Plan
from .sizing import NATIVE_FACTORS
from .specs import StageSpec
from .transforms import Resample


class LocalRunner:
    def __init__(self, stage: Stage):
        self.stage = stage

    def run(self, info: ClipInfo, frames):
        return self.stage.run(info, frames)


class ClipFailed(UserError):
    """One clip could not go through one stage; a rerun may send it to another replica."""

    def __init__(self, stage: str, clip_id: str, reason: str):
        super().__init__(f"stage {stage}: {clip_id}: {reason}")
        self.stage, self.clip_id, self.reason = stage, clip_id, reason


CONNECT_TRIES = 3         # waits for an UNAVAILABLE replica before trying the next
CONNECT_BACKOFF = 0.25    # seconds, doubled each try
DOWN_FOR = 30.0           # seconds a replica that did not answer is tried last
CLIP_DEADLINE = 3600.0    # seconds one clip may take in one stage service


class RemoteRunner:
    """A stage served by one or more replicas: clips go round robin, a clip retried after a
    failure starts at the next replica, a replica that does not answer is waited for with
    backoff and then passed over."""

    def __init__(self, spec: StageSpec, attempts: dict[str, int] | None = None,
                 deadline: float = CLIP_DEADLINE):
        from deploy.triton.client import client_for
        self.spec = spec
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
            raise ClipFailed(name, info.clip_id, rpc_reason(exc)) from None
        return out_info, _failing_as(name, info.clip_id, out_frames)

    def _pick(self, clip_id: str) -> int:
        first = _clip_number(clip_id) + self.attempts.get(clip_id, 0)
        order = [(first + i) % len(self.clients) for i in range(len(self.clients))]
        order.sort(key=lambda r: self.down_until[r] > time.monotonic())  # stable: answering first
        for replica in order:
            if _wait_ready(self.clients[replica], CONNECT_TRIES, CONNECT_BACKOFF):
                return replica
            self.down_until[replica] = time.monotonic() + DOWN_FOR
        where = ", ".join(self.replicas)
        raise ClipFailed(f"{self.spec.task}/{self.spec.model}", clip_id, f"no replica answers ({where})")


def _wait_ready(client, tries: int, backoff: float) -> bool:
    """Whether the replica's channel connects, retrying with doubling waits."""
    import grpc
    channel = getattr(client, "channel", None)
    if channel is None:
        return True  # a client without a gRPC channel of its own reports failures in process()
    for attempt in range(tries):
        try:
            grpc.channel_ready_future(channel).result(timeout=backoff * 2 ** attempt)
            return True
        except grpc.FutureTimeoutError:
            continue
    return False


def _clip_number(clip_id: str) -> int:
    digits = "".join(ch for ch in clip_id if ch.isdigit())
    return int(digits) if digits else 0


def _failing_as(name: str, clip_id: str, frames):
    try:
        yield from frames
    except Exception as exc:
        raise ClipFailed(name, clip_id, rpc_reason(exc)) from None


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

    def passes_through(self, params: dict) -> bool:
        """Whether the stage would hand the clip back unchanged (interpolation by 1, a
        tape already at the target rate once deinterlaced): its frames then skip it, and
        a remote one is not sent them at all."""
        return (self.spec is not None and self.spec.task == "interpolate"
                and params.get("factor", "").strip() == "1")


def build_steps(plan: Plan, device: str = "auto",
                attempts: dict[str, int] | None = None) -> list[Step]:
    steps: list[Step] = []
    resampled = plan.working_size == (plan.source.width, plan.source.height)
    if not plan.source.interlaced and not resampled:
        steps.append(Step("resample", LocalRunner(Resample(*plan.working_size)), {}))
        resampled = True
    for spec in plan.stages:
        params = dict(spec.params)
        if spec.task == "analog":
            params.setdefault("field_order", plan.source.field_order
                              if plan.source.interlaced else "progressive")
            if spec.model == "classical" and not resampled:
                params.setdefault("size", "%dx%d" % plan.working_size)
        if spec.task == "superres" and spec.model in NATIVE_FACTORS:
            params["scale"] = str(plan.sizing.model_factor)
        runner = (LocalRunner(registry.create_local(spec.task, spec.model, device))
                  if spec.endpoint == "local" else RemoteRunner(spec, attempts))
        steps.append(Step(f"{spec.task}/{spec.model}", runner, params, spec))
        if spec.task == "analog" and not resampled:
            steps.append(Step("resample", LocalRunner(Resample(*plan.working_size)), {}))
            resampled = True
        if spec.task == "superres" and plan.sizing.model_factor != plan.sizing.factor:
            # a fixed-factor model's frames, resized down to the size the plan chose
            steps.append(Step("resize", LocalRunner(Resample(*plan.output_size)), {}))
    return steps
