"""What a job will do, decided before any work starts: the stages with their models
resolved (locally, or by asking each service what it runs), the working resolution and
the output size (sizing.py) and frame rate, and whether the job fits this machine's
memory (memory.py)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction

from .. import media
from ..errors import UserError
from ..media.native import native_size
from . import memory, registry, sizing
from .endpoints import endpoints, rpc_reason
from .specs import DEINTERLACE, FIELD_ORDERS, StageSpec

NATIVE_SAMPLE = 8         # frames looked at to estimate the real resolution


@dataclass
class Plan:
    """What a job will do, decided before any work starts."""

    source: media.SourceInfo
    stages: list[StageSpec]
    sizing: sizing.Sizing
    target_fps: Fraction

    @property
    def working_size(self) -> tuple[int, int]:
        return self.sizing.working

    @property
    def output_size(self) -> tuple[int, int]:
        return self.sizing.output

    def lines(self) -> list[str]:
        """What the job will do, and what it will take of this machine, in words."""
        return [*self.decisions(), memory.describe(self)]

    def decisions(self) -> list[str]:
        """What the job will do, in words: the same for the same input and settings on
        any machine (an interrupted run's identity), unlike the memory it finds free."""
        w, h = self.working_size
        src = self.source
        return [f"input: {src.width}x{src.height} {float(src.fps):.3f} fps {src.field_order}, "
                f"SAR {src.sar}, DAR {src.dar}, {src.duration:.2f}s, "
                f"audio: {src.audio_codec or 'none'}",
                f"working resolution: {w}x{h}; {self.sizing.describe()}; "
                f"output frame rate {float(self.target_fps):.3f} fps",
                "stages: " + " -> ".join(s.describe() for s in self.stages)]


def make_plan(source: media.SourceInfo, specs: list[StageSpec], native: str = "auto",
              scale: str = "auto", max_height: int = sizing.MAX_HEIGHT,
              refuse: bool = True) -> Plan:
    """The plan for ``source``; with ``refuse`` a job that would not fit this machine's
    memory is refused here, before any work (``inspect`` reports it instead)."""
    sizing.check_flags(scale, max_height)
    source = with_field_order(source, specs)
    # deinterlace runs for interlaced input alone; every stage after it takes progressive
    # frames at the field rate
    specs = [s for s in specs if s.task != DEINTERLACE or source.interlaced]
    resolved = [StageSpec(s.task, _resolve(s), _stage_params(s, source), s.endpoint)
                for s in specs]
    superres = next((s.model for s in resolved if s.task == "superres"), None)
    sized = sizing.decide(_working_size(source, native, resolved), str(scale), max_height, superres)
    if sized.factor == 1:
        resolved = [s for s in resolved if s.task != "superres"]
    plan = Plan(source, resolved, sized, 2 * source.fps)
    if refuse:
        memory.refuse_unfit(plan)
    return plan


def with_field_order(source: media.SourceInfo, specs: list[StageSpec]) -> media.SourceInfo:
    """``source`` with the field order the job goes by: the container's, unless the
    deinterlace stage's ``field_order`` says otherwise ('auto': the container's)."""
    stage = next((s for s in specs if s.task == DEINTERLACE), None)
    given = (stage.params.get("field_order", "auto") if stage else "auto").strip().lower()
    if given not in FIELD_ORDERS:
        raise UserError(f"field order {given!r}: expected one of {', '.join(FIELD_ORDERS)}")
    if given in ("auto", source.field_order):
        return source
    return dataclasses.replace(source, field_order=given)


def _stage_params(spec: StageSpec, source: media.SourceInfo) -> dict[str, str]:
    """The params the stage is sent: the deinterlace stage's field order made concrete."""
    params = dict(spec.params)
    if spec.task == DEINTERLACE:
        params["field_order"] = source.field_order
    return params


def _resolve(spec: StageSpec) -> str:
    if spec.endpoint == "local":
        return registry.resolve(spec.task, spec.model)
    return _remote_model(spec)


def _remote_model(spec: StageSpec) -> str:
    """Ask the service which model it runs for the task: the plan is then the same as an
    embedded one with that model, and an unreachable endpoint fails before any work."""
    try:
        served = _describe_any(endpoints(spec.endpoint))
    except Exception as exc:
        raise UserError(f"stage {spec.task}: cannot reach {spec.endpoint} ({rpc_reason(exc)})") from None
    models = [d["model"] for d in served if d["task"] == spec.task
              and spec.model in ("auto", d["model"])]
    if not models:
        offered = ", ".join(f"{d['task']}/{d['model']}" for d in served)
        raise UserError(f"stage {spec.task}: {spec.endpoint} serves {offered}, "
                        f"not {spec.task}/{spec.model}")
    return models[0]


def _describe_any(replicas: list[str]) -> list[dict]:
    """What the first replica that answers serves (replicas serve the same)."""
    from deploy.triton.client import client_for
    failure: Exception | None = None
    for endpoint in replicas:
        try:
            with client_for(endpoint, timeout=15) as client:
                return client.describe()
        except Exception as exc:
            failure = exc
    raise failure or ValueError("no endpoint given")


def _working_size(source: media.SourceInfo, native: str, specs: list[StageSpec]) -> tuple[int, int]:
    """The real resolution to restore from ('auto' measures it, 'full' keeps the frame size,
    'WxH' sets it)."""
    full = (source.width, source.height)
    deinterlaced = source.interlaced and any(s.task == DEINTERLACE for s in specs)
    if native == "full":
        return full
    if native != "auto":
        try:
            w, h = (int(v) for v in native.lower().split("x"))
        except ValueError:
            raise UserError(f"--native {native!r}: expected auto, full or WxH") from None
        if not (16 <= w <= source.width * 4 and 16 <= h <= source.height * 4):
            raise UserError(f"--native {native}: out of range for a {source.width}x{source.height} input")
        return (w, h)
    if source.interlaced and not deinterlaced:
        return full  # resampling interlaced frames would mix the two fields
    # Only the sampled frames are converted (and none decoded past the last of them).
    found = media.frames_at(source, range(0, 30 * NATIVE_SAMPLE, 30))
    return native_size([found[i] for i in sorted(found)], source.interlaced)
