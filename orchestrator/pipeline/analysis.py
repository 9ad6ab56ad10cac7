"""What a job knows before any work, from one pass over the input: the shots (the clips it
streams), which of them are grey, the references each grey scene takes its colour from, and
the burned-in overlays (date stamps) with the frames they are in; then, from a few frames
of each shot read by seeking, its damaged border bands.
The job, `inspect` and `preview` all use it, so what they report is what the job does."""
from __future__ import annotations

import cv2
import numpy as np

from services.stagekit.bands import Bands, bands_entry, detect_bands
from services.stagekit.codec import MAX_REFERENCES

from .. import media
from ..media.overlays import OverlayFinder, detect_size
from ..media.references import GreyScene, Scan, read_references, scan
from ..media.shots import SCAN_SIZE, Shot
from .plan import Plan
from .specs import StageSpec


def colorizes(plan: Plan) -> bool:
    return any(s.task == "colorize" for s in plan.stages)


def analyse(plan: Plan, on_frame=None) -> Scan:
    """What the job knows before any work, from one pass over the input: its shots (the
    clips it streams, so progress counts against a fixed total), which are grey, and, when a
    colorize stage runs, each grey scene's references from the tape's colour shots. The
    pass reads small frames (the decoder scales them, a fraction of the cost of whole
    ones); the few references chosen are then read whole, each by a seek."""
    src = plan.source
    colour = colorizes(plan)
    frames = media.decode(src, _small_size(plan))
    if on_frame is not None:
        frames = _counted(frames, on_frame)
    overlays = OverlayFinder(float(src.fps))
    found = scan(overlays.watch(frames), float(src.fps), plan.working_size, src.interlaced,
                 keep_images=False, later=colour)
    found.overlays = overlays.finish()
    if not colour:
        return found
    return read_references(found, lambda indices: media.frames_at(src, indices),
                           plan.working_size, src.interlaced)


def _small_size(plan: Plan) -> tuple[int, int]:
    """The size the pass decodes at: the shot scan's, or the overlay detector's when that is
    larger (text needs a few pixels per stroke)."""
    overlay = detect_size(*plan.working_size)
    return overlay if overlay[0] * overlay[1] > SCAN_SIZE[0] * SCAN_SIZE[1] else SCAN_SIZE


def _counted(frames, on_frame):
    for frame in frames:
        yield frame
        on_frame()


def clip_analysis(found: Scan, shot: Shot, plan: Plan,
                  bands: Bands | None = None) -> dict[str, bytes]:
    """What the analysis found in one clip, as its header carries it to every stage
    (``ClipInfo.analysis``; keys documented in stage.proto's ClipHeader): whether it is
    grey, the source's field order, its overlays at the working size, and its damaged
    bands when they were looked for (``shot_bands``)."""
    entries = {"grey": b"1" if shot.grey else b"0",
               "field_order": plan.source.field_order.encode()}
    if found.overlays:
        entries.update(found.overlays.analysis(shot.start, shot.stop, plan.working_size))
    if bands is not None:
        entries.update(bands_entry(bands))
    return entries


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


# Frames of the whole input TAPE scores beside each clip's own: as many as a clip header
# may carry (a service refuses more).
TAPE_CANDIDATES = MAX_REFERENCES


def runs_tape(plan: Plan) -> bool:
    return any(s.task == "analog" and s.model == "tape" for s in plan.stages)


def input_candidates(plan: Plan, count: int = TAPE_CANDIDATES) -> tuple[bytes, ...]:
    """``count`` frames spread evenly over the whole input, at the working size (one field
    of an interlaced source, so no combing reads as damage), as JPEG: the clip header's
    references for TAPE, which scores them with each clip's own frames and takes its
    references from the whole video, as the authors' script does. Read by seeking, not by
    decoding the input again."""
    total = max(1, plan.source.frame_count or 1)
    found = []
    for _, image in sorted(working_frames(plan, _spread(0, total, count)).items()):
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, 95])
        if ok:
            found.append(jpeg.tobytes())
    return tuple(found)


def outpaints(plan: Plan) -> bool:
    """Whether a stage rebuilds the damaged bands (outpaint, or inpaint with MAT)."""
    return any(s.task in ("outpaint", "inpaint") for s in plan.stages)


# Frames of each shot the band detector reads (as many as the classical stage's look-ahead
# once read), spread over at most its first BAND_SPAN_S: long enough that the picture's
# own edges move off a line, short enough that reaching them costs one seek.
BAND_FRAMES = 16
BAND_SPAN_S = 1.0


def shot_bands(plan: Plan, shots: list[Shot]) -> dict[int, Bands]:
    """Each shot's damaged bands (by its first frame), found once for every outpaint
    stage, in the pixels of the frames that stage gets (the working size, deinterlaced):
    the clip header's "bands". Read by seeking, a shot at a time, not by decoding the
    input again."""
    span = max(1, round(float(plan.source.fps) * BAND_SPAN_S))
    found = {}
    for shot in shots:
        picks = _spread(shot.start, min(shot.stop, shot.start + span), BAND_FRAMES)
        frames = working_frames(plan, picks)
        found[shot.start] = detect_bands([frames[i] for i in sorted(frames)])
    return found


def working_frames(plan: Plan, indices) -> dict[int, np.ndarray]:
    """The input's frames at ``indices`` as the stages after deinterlacing see them: one
    field of an interlaced source (no combing to read as damage), area-resampled to the
    working size, RGB24. Read by seeking."""
    src = plan.source
    return {index: cv2.resize(frame[::2] if src.interlaced else frame, plan.working_size,
                              interpolation=cv2.INTER_AREA)
            for index, frame in media.frames_at(src, indices).items()}


def _spread(start: int, stop: int, count: int) -> list[int]:
    """Up to ``count`` frame indices spread evenly over ``start`` to ``stop`` (exclusive)."""
    last = max(start, stop - 1)
    return sorted(set(np.linspace(start, last, min(count, last - start + 1))
                      .round().astype(int).tolist()))
