"""What a job knows before any work, from one pass over the input: the shots (the clips it
streams), which of them are grey, the references each grey scene takes its colour from, and
the burned-in overlays (date stamps) with the frames they are in; then, from a few frames
of each shot read by seeking, its damaged border bands.
The job, `inspect` and `preview` all use it, so what they report is what the job does."""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager

import cv2
import numpy as np

from services.stagekit.bands import Bands, bands_entry, detect_bands
from services.stagekit.codec import MAX_REFERENCES
from services.stagekit.stage import ClipInfo

from .. import media
from ..media.overlays import OverlayFinder, detect_size
from ..media.references import GreyScene, Scan, read_references, scan
from ..media.shots import SCAN_SIZE, Shot
from .plan import Plan
from .specs import DEINTERLACE, StageSpec


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
        entries.update(bands_entry(bands, plan.working_size))
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
    import cv2
    import numpy as np
    src = plan.source
    total = max(1, src.frame_count or 1)
    picks = sorted(set(np.linspace(0, total - 1, min(count, total)).round().astype(int).tolist()))
    found = []
    for index, frame in sorted(media.frames_at(src, picks).items()):
        field = frame[::2] if src.interlaced else frame
        image = cv2.resize(field, plan.working_size, interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, 95])
        if ok:
            found.append(jpeg.tobytes())
    return tuple(found)


def outpaints(plan: Plan) -> bool:
    """Whether a stage rebuilds the damaged bands (outpaint, or inpaint with MAT)."""
    return any(s.task in ("outpaint", "inpaint") for s in plan.stages)


# Frames of each shot the band detector reads: as many as the outpaint stage would read
# before its first output (classical LOOKAHEAD), the first of the shot.
BAND_FRAMES = 16


def shot_bands(plan: Plan, shots: list[Shot]) -> dict[int, Bands]:
    """Each shot's damaged bands (by its first frame), found once for every outpaint
    stage, in the frames that stage gets: the clip header's "bands". Its first frames are
    read by seeking (not by decoding the input again) and made what the steps before
    outpaint make of them (``outpaint_frames``)."""
    deinterlace = next((s for s in plan.stages if s.task == DEINTERLACE), None)
    count = BAND_FRAMES // 2 if deinterlace is not None else BAND_FRAMES   # 2 fields a frame
    found = {}
    for shot in shots:
        read = media.frames_at(plan.source, range(shot.start, min(shot.stop, shot.start + count)))
        frames = [read[i] for i in sorted(read)]
        found[shot.start] = detect_bands(outpaint_frames(plan, deinterlace, frames) if frames else [])
    return found


def outpaint_frames(plan: Plan, deinterlace: StageSpec | None, frames: list[np.ndarray]):
    """``frames`` of the input as the outpaint stage gets them: deinterlaced (the plan's
    deinterlace stage, run here in process: a band's edge moves by a line between one
    field and the deinterlaced frame) and area-resampled to the working size. The analog
    stage between them restores the picture in place (its line-jitter repair moves lines
    by a pixel or so at most, within the band's one line of transition)."""
    if deinterlace is None:
        return [cv2.resize(f, plan.working_size, interpolation=cv2.INTER_AREA) for f in frames]
    from services.classical.deinterlace import DeinterlaceStage
    src = plan.source
    params = {**deinterlace.params, "size": "%dx%d" % plan.working_size}
    info = ClipInfo("bands", src.width, src.height, src.fps, sar=src.sar, params=params)
    with _quiet("restoration.classical"):   # not a clip of the job: no line per shot
        return list(DeinterlaceStage().run(info, iter(frames))[1])


@contextmanager
def _quiet(logger: str):
    """``logger``'s records from this thread are dropped (other threads' pass)."""
    thread = threading.get_ident()

    def other_threads(record) -> bool:
        return record.thread != thread
    logging.getLogger(logger).addFilter(other_threads)
    try:
        yield
    finally:
        logging.getLogger(logger).removeFilter(other_threads)
