"""colorize/classical: colour the black-and-white frames of a clip, and only those.

A clip the orchestrator's analysis found to be a black-and-white scene (the clip header's
``grey``) is coloured whole: a stage before may have tinted its frames a little, which
must not change that. Otherwise a frame is black-and-white when its chroma is about zero
everywhere (a little is allowed for compression): a grey stretch too short to be a shot
of its own is still coloured. ``scenes=all`` colours every frame.
Colour frames pass through untouched, bit for bit.

References are the user's images (``reference`` = comma-separated paths), first, and
those the orchestrator sends in the clip header: frames of the tape's own colour shots
around the grey scene, nearest first (``orchestrator.media.references``); per region the
set that matches better colours it, or where both match, the one with more colour, so
the user's photos lead where they fit and never wash out the tape's colour. A grey
frame is coloured by exemplar-based colour transfer (see ``Colourist``): every reference
is matched to it densely (DIS optical flow on luma) and lends its chroma where its luma
agrees; the previous coloured frame, carried along the motion, does the same, so colour
holds still; what no exemplar covers takes the chroma of its (luma, texture) cell in a
table voted by every reference pixel (after Welsh et al., 2002), muted. The chroma is then
refined by a guided filter led by the luma (He et al.), so it stops at object edges.
Pixels that already carry saturated colour in a grey frame (a burned-in date stamp) keep
it, with a rim around them, so no halo or colour spill forms there.
Without references the grey frames are left grey, with a warning in the log.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

from services.stagekit.codec import decode_reference
from services.stagekit.monochrome import found_grey, is_monochrome
from services.stagekit.stage import ClipInfo, StageError

from .common import ClassicalStage, from_work, log, to_work
from .flow import FlowEstimator, positions

LUMA_BINS = 64
TEXTURE_BINS = 12
TEXTURE_MAX = 40.0   # local luma standard deviation mapped to the last texture bin
TEXTURE_RADIUS = 2   # local statistics over a (2r+1)^2 window
CHROMA_SMOOTH = 4.0  # sigma of the spatial smoothing of the table's chroma
MUTED = 0.5          # share of the table's colour kept where no exemplar matched
TABLE_TRUST = 0.08   # the table's weight against exemplars (match 0..1)
MATCH_TOLERANCE = 6.0  # luma difference (8-bit) at which an exemplar's match is doubted
SHARPNESS = 4.0      # matches are weighted by match**SHARPNESS: the best exemplar leads
NEGLIGIBLE = 1e-6    # a match below this weighs nothing (1e-24 beside the table's 4e-5)
CARRY = 0.9          # the previous frame's colour counts this much against a reference's
FLOW_PRESET = "fast"   # DIS preset: as good as medium here, at half the time
WORK_WIDTH = 480     # matching runs at most this wide; chroma has little detail
GUIDE_RADIUS = 3     # guided filter window (work pixels) and regularisation (luma 0..1)
GUIDE_EPS = 2e-3
OVERLAY_CHROMA = 24.0  # chroma (8-bit Cr/Cb magnitude) of a pixel that already has colour
OVERLAY_RIM = 2      # pixels around it kept as they were too (a text outline)
BOTH_MATCH = 0.1    # match above which both estimates count, the more saturated kept (0.5 left
                    # cockatoo 0.2 % less colourful with the user's photos than without)
PICK_SMOOTH = 4.0    # sigma (work pixels) of the region over which user vs tape is chosen


class ColorizeStage(ClassicalStage):
    task = "colorize"
    window = (0, 0)
    max_batch = 16
    params = ("reference", "scenes")

    def settings(self, info: ClipInfo) -> tuple[Path, ...]:
        self.check_known(info)
        self.param_choice(info, "scenes", ("grey", "all"))
        value = info.params.get("reference", "").strip()
        paths = tuple(Path(part.strip()) for part in value.split(",") if part.strip())
        for path in paths:
            if not path.is_file():
                raise StageError(f"{self.name}: reference image {path} does not exist")
            read_reference(path)
        for data in info.references:
            decode_reference(data)
        return paths

    def process(self, info: ClipInfo, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        paths = self.settings(info)
        # a grey scene (or scenes=all): every frame; else each frame as it looks
        whole = self.param_choice(info, "scenes", ("grey", "all")) == "all" or found_grey(info)
        colourist = None
        grey_count = total = 0
        for frame in frames:
            total += 1
            if not (whole or is_monochrome(frame)):
                if colourist is not None:
                    colourist.forget()
                yield frame
                continue
            grey_count += 1
            if not paths and not info.references:
                if grey_count == 1:
                    log.warning("%s clip %s: black-and-white frames found but no reference "
                                "images given (set colorize.reference=IMAGE,...) and no colour "
                                "shot of the tape to take colour from: they stay grey",
                                self.name, info.clip_id)
                yield frame
                continue
            image = to_work(frame)
            if colourist is None:
                # The user's images first; the tape's own colour frames colour what the
                # user's match worse, so giving references never takes colour away.
                references = ([read_reference(p) for p in paths]
                              + [decode_reference(d).astype(np.float32) for d in info.references])
                colourist = Colourist(references, image.shape[:2], len(paths))
                log.info("%s clip %s: colouring grey frames from %d %s", self.name,
                         info.clip_id, len(references),
                         "reference image(s)" if paths and not info.references else
                         "of your reference image(s) and the tape's colour frames" if paths else
                         "frame(s) of the tape's colour shots")
            yield from_work(colourist.colour(image), info.pixel_format)
        log.info("%s clip %s: %d of %d frames black-and-white%s", self.name, info.clip_id,
                 grey_count, total, " (coloured)" if colourist is not None else "")


def luma_of(image: np.ndarray) -> np.ndarray:
    """BT.601 luma of float32 RGB in [0, 255]."""
    return image @ np.float32([0.299, 0.587, 0.114])


def chroma_of(image: np.ndarray) -> np.ndarray:
    """BT.601 (Cr, Cb) around zero, same scale."""
    y = luma_of(image)
    return np.dstack([(image[..., 0] - y) * 0.713, (image[..., 2] - y) * 0.564])


def rgb_of(y: np.ndarray, chroma: np.ndarray) -> np.ndarray:
    cr, cb = chroma[..., 0], chroma[..., 1]
    return np.dstack([y + 1.403 * cr, y - 0.714 * cr - 0.344 * cb, y + 1.773 * cb])




@functools.lru_cache(maxsize=16)
def _read(path: str, mtime: float) -> np.ndarray:
    data = np.fromfile(path, np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise StageError(f"colorize/classical: {path} is not an image OpenCV can read")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(np.float32)


def read_reference(path: Path) -> np.ndarray:
    return _read(str(path), path.stat().st_mtime)


def local_contrast(y: np.ndarray) -> np.ndarray:
    size = (2 * TEXTURE_RADIUS + 1,) * 2
    mean = cv2.blur(y, size)
    return np.sqrt(np.maximum(cv2.blur(y * y, size) - mean * mean, 0.0))


class Palette:
    """The (luma, contrast) -> chroma table of a clip's references."""

    def __init__(self, references: list[np.ndarray], clip_luma: np.ndarray):
        target_mean, target_std = float(clip_luma.mean()), float(clip_luma.std()) + 1e-3
        sums = np.zeros((LUMA_BINS, TEXTURE_BINS, 2), np.float64)
        squares = np.zeros((LUMA_BINS, TEXTURE_BINS), np.float64)
        counts = np.zeros((LUMA_BINS, TEXTURE_BINS), np.float64)
        for reference in references:
            y = luma_of(reference)
            # Match the reference's luma range to the clip's, so that "bright" means the
            # same in both (Welsh et al.'s luminance remapping).
            y = (y - y.mean()) * (target_std / (y.std() + 1e-3)) + target_mean
            cells = self.cells(y)
            chroma = chroma_of(reference)
            for channel in range(2):
                np.add.at(sums[..., channel], cells, chroma[..., channel])
            np.add.at(squares, cells, np.sum(chroma ** 2, axis=2))
            np.add.at(counts, cells, 1.0)
        table = fill_empty(sums, counts)
        # A cell whose votes disagree predicts its mean colour poorly: shrink it towards
        # grey by how much of the votes' chroma energy the mean explains.
        energy = fill_empty(squares[..., None], counts)[..., 0]
        agreement = np.sum(table ** 2, axis=2) / np.maximum(energy, 1e-6)
        self.table = table * np.clip(agreement, 0.0, 1.0)[..., None]

    @staticmethod
    def cells(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        luma_bin = np.clip(y * (LUMA_BINS / 256.0), 0, LUMA_BINS - 1).astype(np.intp)
        texture = local_contrast(y) * (TEXTURE_BINS / TEXTURE_MAX)
        return luma_bin, np.clip(texture, 0, TEXTURE_BINS - 1).astype(np.intp)

    def chroma(self, y: np.ndarray) -> np.ndarray:
        chroma = self.table[self.cells(y)].astype(np.float32)
        return cv2.GaussianBlur(chroma, (0, 0), CHROMA_SMOOTH)


class Colourist:
    """Exemplar-based colouring of one grey scene's frames, in order.

    Per frame, every exemplar (each reference, and the previous coloured frame) is
    brought onto the frame by optical flow and scored per pixel by how well its luma
    agrees there; the chroma is their average weighted by score**SHARPNESS (the best
    match leads, ties blend smoothly, so small changes do not switch colours), with the
    muted table for what none covers. A guided filter led by the frame's luma then makes
    the chroma follow its edges. Matching runs at WORK_WIDTH at most; the chroma is
    brought back to full size by the same filter. The user's references and the tape's
    are not averaged together but chosen between (see ``colour``)."""

    def __init__(self, references: list[np.ndarray], shape: tuple[int, int], users: int = 0):
        height, width = shape
        self.users = users    # the first ``users`` references are the user's
        scale = min(1.0, WORK_WIDTH / width)
        self.shape = shape
        self.work = (max(8, round(height * scale)), max(8, round(width * scale)))
        self.flow = FlowEstimator(FLOW_PRESET)
        # References of any size are brought to the work size once: the table and the
        # matching then cost the same whatever the user's photos measure.
        references = [cv2.resize(r, self.work[::-1], interpolation=cv2.INTER_AREA)
                      for r in references]
        self.exemplars = []
        for small in references:
            y = luma_of(small)
            self.exemplars.append((self.flow.prepare(_eight(y)), _soft(y),
                                   chroma_of(small).astype(np.float32)))
        # The table is the fallback for what no exemplar matches: from the tape's own colour
        # shots where there are any (the user's photos of another moment would shift it).
        self.palette_of = references[users:] or references
        self.palette: Palette | None = None
        self.previous: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def forget(self) -> None:
        """A colour frame came between: the next grey frame starts afresh."""
        self.previous = None

    def colour(self, image: np.ndarray) -> np.ndarray:
        y_full = luma_of(image)
        small = cv2.resize(image, self.work[::-1], interpolation=cv2.INTER_AREA)
        y = luma_of(small)
        if self.palette is None:
            self.palette = Palette(self.palette_of, y)
        grey, soft = self.flow.prepare(_eight(y)), _soft(y)
        table = self.palette.chroma(y)
        # Two estimates, one from the user's references and one from the tape's, each with
        # the muted table and the carried colour; per pixel the one whose references match
        # better is kept (the user's on a tie). Averaging them instead would mix different
        # hues where they disagree, and the mean of chroma vectors pointing apart is shorter
        # than either: the user's photos of another moment would wash the tape's colour out.
        # The best matches are compared over a small region: where both match poorly a
        # choice pixel by pixel follows noise. With one kind of reference only, this is
        # the plain weighted average (the other estimate's best stays -1).
        floor = np.full(y.shape, TABLE_TRUST ** SHARPNESS, np.float32)
        totals = [floor, floor.copy()]
        sums = [table * (MUTED * floor)[..., None] for _ in totals]
        best = [np.full(y.shape, -1.0, np.float32) for _ in totals]
        exemplars = list(self.exemplars)
        if self.previous is not None:
            exemplars.append(self.previous)
        for index, (ex_grey, ex_soft, ex_chroma) in enumerate(exemplars):
            where = positions(self.flow(grey, ex_grey, y.shape))
            error = cv2.absdiff(_moved(ex_soft, where), soft)
            match = np.exp(-(cv2.blur(error, (5, 5)) / MATCH_TOLERANCE) ** 2)
            groups = [int(index >= self.users)]
            if index == len(self.exemplars):
                match *= CARRY
                groups = [0, 1]
            else:
                np.maximum(best[groups[0]], match, out=best[groups[0]])
            # Matches too small to count are zeroed first: their powers are subnormal
            # floats, on which the CPU's pow takes a slow path (a quarter of the stage's time).
            weight = np.where(match > NEGLIGIBLE, match, 0.0) ** SHARPNESS
            coloured = weight[..., None] * _moved(ex_chroma, where)
            for group in groups:
                sums[group] += coloured
                totals[group] += weight
        user_match, tape_match = (cv2.GaussianBlur(b, (0, 0), PICK_SMOOTH) for b in best)
        users, tapes = (s / t[..., None] for s, t in zip(sums, totals))
        # Where both match at all, the more saturated: the muted one is the less sure of
        # its hue, and the user's photos then never take colour away (a choice by match
        # alone left the result 0.4 % less colourful than without them).
        both = np.minimum(user_match, tape_match) >= BOTH_MATCH
        stronger = np.einsum("ijk,ijk->ij", users, users) >= np.einsum("ijk,ijk->ij", tapes, tapes)
        user_wins = np.where(both, stronger, user_match >= tape_match)
        chroma = np.where(user_wins[..., None], users, tapes)
        chroma = guided_filter(y / 255.0, chroma, GUIDE_RADIUS, GUIDE_EPS)
        self.previous = (grey, soft, chroma)
        if chroma.shape[:2] != self.shape:
            chroma = cv2.resize(chroma, self.shape[::-1], interpolation=cv2.INTER_LINEAR)
            chroma = guided_filter(y_full / 255.0, chroma, 2, GUIDE_EPS)
        coloured = rgb_of(y_full, chroma).astype(np.float32)
        return keep_overlays(image, coloured)


def _moved(image: np.ndarray, where: np.ndarray) -> np.ndarray:
    """``warp`` by the positions the flow gives (computed once for the luma and chroma)."""
    return cv2.remap(image, where, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _eight(y: np.ndarray) -> np.ndarray:
    return np.clip(y + 0.5, 0, 255).astype(np.uint8)


def _soft(y: np.ndarray) -> np.ndarray:
    """Luma with its noise smoothed away, for judging matches (a tape's grain differs
    from frame to frame and would otherwise fail every match)."""
    return cv2.GaussianBlur(y.astype(np.float32), (0, 0), 1.2)


def guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter (grey guide), per channel of ``source``: the output is
    locally a linear function of the guide, so it has edges where the guide has them and
    nowhere else. Box filters from OpenCV (cv2.ximgproc, its own version, is only in the
    contrib build)."""
    size = (2 * radius + 1,) * 2
    box = lambda x: cv2.boxFilter(x, -1, size, borderType=cv2.BORDER_REFLECT)
    guide = guide.astype(np.float32)
    mean_g = box(guide)
    var_g = box(guide * guide) - mean_g * mean_g
    out = np.empty_like(source, dtype=np.float32)
    for channel in range(source.shape[2]):
        src = source[..., channel].astype(np.float32)
        mean_s = box(src)
        a = (box(guide * src) - mean_g * mean_s) / (var_g + eps)
        b = mean_s - a * mean_g
        out[..., channel] = box(a) * guide + box(b)
    return out


def keep_overlays(image: np.ndarray, coloured: np.ndarray) -> np.ndarray:
    """``coloured``, except where the grey frame already carries saturated colour (a
    burned-in date stamp) and a rim around it (its outline): there the frame as it was."""
    chroma = chroma_of(image)
    overlay = (np.einsum("ijk,ijk->ij", chroma, chroma) > OVERLAY_CHROMA ** 2).astype(np.uint8)
    if not overlay.any():
        return coloured
    rim = cv2.dilate(overlay, np.ones((2 * OVERLAY_RIM + 1,) * 2, np.uint8))
    return np.where(rim[..., None] > 0, image, coloured)


def fill_empty(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean chroma per cell; an empty cell takes the mean of the nearest cells that have
    votes (normalised convolution at growing scales), so every grey pixel gets a colour."""
    channels = sums.shape[2]
    table = np.zeros(sums.shape, np.float32)
    have = counts > 0
    table[have] = sums[have] / counts[have][:, None]
    if have.all() or not have.any():
        return table
    weights = counts.astype(np.float32)
    for sigma in (1.0, 2.0, 4.0, 8.0, 16.0, 32.0):
        spread_w = cv2.GaussianBlur(weights, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
        missing = ~have & (spread_w > 1e-6)
        if missing.any():
            for channel in range(channels):
                spread = cv2.GaussianBlur(sums[..., channel].astype(np.float32), (0, 0), sigma,
                                          borderType=cv2.BORDER_REPLICATE)
                table[..., channel][missing] = spread[missing] / spread_w[missing]
            have = have | missing
        if have.all():
            break
    return table
