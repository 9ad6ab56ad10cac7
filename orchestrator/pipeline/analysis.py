"""What a job knows before any work, from one pass over the input: the shots (the clips it
streams), which of them are grey, and the references each grey scene takes its colour from.
The job, `inspect` and `preview` all use it, so what they report is what the job does."""
from __future__ import annotations

from .. import media
from ..media.references import GreyScene, Scan, scan
from ..media.shots import SCAN_SIZE, Shot
from .plan import Plan
from .specs import StageSpec


def colorizes(plan: Plan) -> bool:
    return any(s.task == "colorize" for s in plan.stages)


def analyse(plan: Plan, on_frame=None) -> Scan:
    """What the job knows before any work, from one pass over the input: its shots (the
    clips it streams, so progress counts against a fixed total), which are grey, and, when a
    colorize stage runs, each grey scene's references from the tape's colour shots (so the
    pass then reads whole frames; otherwise small ones, which is cheaper)."""
    src = plan.source
    colour = colorizes(plan)
    frames = media.decode(src) if colour else media.decode(src, SCAN_SIZE)
    if on_frame is not None:
        frames = _counted(frames, on_frame)
    return scan(frames, float(src.fps), plan.working_size, src.interlaced, keep_images=colour)


def _counted(frames, on_frame):
    for frame in frames:
        yield frame
        on_frame()


def clip_analysis(plan: Plan, shot: Shot) -> dict[str, bytes]:
    """What the analysis found in one clip, as its header carries it to every stage
    (``ClipInfo.analysis``; keys documented in stage.proto's ClipHeader)."""
    return {"grey": b"1" if shot.grey else b"0",
            "field_order": plan.source.field_order.encode()}


def colour_source(scene: GreyScene, colorize: StageSpec | None) -> str:
    """Where a grey scene's colour comes from, in plain words."""
    user = colorize.params.get("reference", "").strip() if colorize else ""
    if colorize is None:
        return "stays grey: the colorize stage is not in the pipeline"
    if user:
        tape = f", then {len(scene.references)} of the tape's colour frames" \
            if scene.references and colorize.model == "classical" else ""
        return f"colour from your reference image(s) {user}{tape}"
    if scene.references or colorize.model == "classical":
        return scene.describe()
    return f"colour from {colorize.model} (no colour frame in the tape to take colour from)"
