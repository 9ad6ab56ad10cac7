"""colorize/classical: colour the black-and-white frames of a clip, and only those.

A frame is black-and-white when its chroma is about zero everywhere (a little is allowed
for compression). Colour frames pass through untouched, bit for bit.

With reference images (``reference`` = comma-separated paths), grey frames are coloured by
luminance-and-texture matched colour transfer (after Welsh et al., 2002): every reference
pixel votes its chroma (Cr, Cb) into a table indexed by luma and local contrast, the
references' luma first remapped to the clip's range; a grey pixel takes the chroma of its
(luma, contrast) cell, smoothed spatially since chroma has little detail. The table is
built once per clip, so the same grey gets the same colour in every frame: no flicker.
Without references the grey frames are left grey, with a warning in the log.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

from services.stagekit.monochrome import is_monochrome
from services.stagekit.stage import ClipInfo, StageError

from .common import ClassicalStage, from_work, log, to_work
from .flow import FlowEstimator, warp

LUMA_BINS = 64
TEXTURE_BINS = 12
TEXTURE_MAX = 40.0   # local luma standard deviation mapped to the last texture bin
TEXTURE_RADIUS = 2   # local statistics over a (2r+1)^2 window
CHROMA_SMOOTH = 4.0  # sigma of the spatial smoothing of the transferred chroma
MUTED = 0.35
MATCH_TOLERANCE = 6.0  # luma difference (8-bit) at which a propagated colour is doubted
CARRY = 0.7          # share of the previous frame's colour kept where it matches


class ColorizeStage(ClassicalStage):
    task = "colorize"
    window = (0, 0)
    max_batch = 16
    params = ("reference",)

    def settings(self, info: ClipInfo) -> tuple[Path, ...]:
        self.check_known(info)
        value = info.params.get("reference", "").strip()
        paths = tuple(Path(part.strip()) for part in value.split(",") if part.strip())
        for path in paths:
            if not path.is_file():
                raise StageError(f"{self.name}: reference image {path} does not exist")
            read_reference(path)
        return paths

    def process(self, info: ClipInfo, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        references = self.settings(info)
        palette = None
        grey_count = total = 0
        for frame in frames:
            total += 1
            if not is_monochrome(frame):
                if palette is not None:
                    palette.forget()
                yield frame
                continue
            grey_count += 1
            if not references:
                if grey_count == 1:
                    log.warning("%s clip %s: black-and-white frames found but no reference "
                                "images given (set colorize.reference=IMAGE,...): they stay "
                                "grey", self.name, info.clip_id)
                yield frame
                continue
            image = to_work(frame)
            if palette is None:
                palette = Palette([read_reference(path) for path in references],
                                  luma_of(image))
                log.info("%s clip %s: colouring grey frames from %d reference image(s)",
                         self.name, info.clip_id, len(references))
            yield from_work(palette.colour(image), info.pixel_format)
        log.info("%s clip %s: %d of %d frames black-and-white%s", self.name, info.clip_id,
                 grey_count, total, " (coloured)" if references and grey_count else "")


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
        self.flow = FlowEstimator("medium")
        self.previous: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.sources = [(self.flow.prepare(np.clip(luma_of(r) + 0.5, 0, 255).astype(np.uint8)),
                         luma_of(r), chroma_of(r).astype(np.float32)) for r in references]

    @staticmethod
    def cells(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        luma_bin = np.clip(y * (LUMA_BINS / 256.0), 0, LUMA_BINS - 1).astype(np.intp)
        texture = local_contrast(y) * (TEXTURE_BINS / TEXTURE_MAX)
        return luma_bin, np.clip(texture, 0, TEXTURE_BINS - 1).astype(np.intp)

    def colour(self, image: np.ndarray) -> np.ndarray:
        y = luma_of(image)
        chroma = self.table[self.cells(y)].astype(np.float32)
        chroma = cv2.GaussianBlur(chroma, (0, 0), CHROMA_SMOOTH)
        warped, match = self.propagated(y)
        if warped is not None:
            # The table colours by grey level alone and is often wrong about where: where
            # a reference's own pixels were found it gives way to them, elsewhere it is
            # muted, since a wrong colour costs more than too little colour.
            chroma = match[..., None] * warped + (1.0 - match[..., None]) * MUTED * chroma
        chroma = self.steadied(y, chroma)
        return rgb_of(y, chroma).astype(np.float32)

    def forget(self) -> None:
        """A colour frame came between: the next grey frame starts afresh."""
        self.previous = None

    def steadied(self, y: np.ndarray, chroma: np.ndarray) -> np.ndarray:
        """The chroma blended with the previous grey frame's, carried along the motion.

        Each frame's colour is chosen on its own, and small changes in grey level or in
        how well a reference matched switch it from frame to frame: visible flicker. A
        recursive blend along the flow, where the carried luma still matches, keeps an
        object's colour while it moves; where it does not (occlusion, new content) the
        frame's own colour stands."""
        grey = self.flow.prepare(np.clip(y + 0.5, 0, 255).astype(np.uint8))
        if self.previous is not None:
            last_grey, last_luma, last_chroma = self.previous
            motion = self.flow(grey, last_grey, y.shape)
            error = cv2.blur(np.abs(warp(last_luma, motion) - y), (5, 5))
            keep = CARRY * np.exp(-(error / MATCH_TOLERANCE) ** 2)[..., None]
            chroma = keep * warp(last_chroma, motion) + (1.0 - keep) * chroma
        self.previous = (grey, y, chroma)
        return chroma

    def propagated(self, y: np.ndarray):
        """The references' chroma moved onto the frame by optical flow, and how well each
        pixel's luma matches there (0..1): a reference of the same scene then colours
        objects where they are, not merely by their grey level."""
        best = best_match = None
        grey = self.flow.prepare(np.clip(y + 0.5, 0, 255).astype(np.uint8))
        for ref_grey, ref_luma, ref_chroma in self.sources:
            if ref_luma.shape != y.shape:
                continue
            motion = self.flow(grey, ref_grey, y.shape)
            error = cv2.blur(np.abs(warp(ref_luma, motion) - y), (5, 5))
            match = np.exp(-(error / MATCH_TOLERANCE) ** 2)
            moved = warp(ref_chroma, motion)
            if best is None:
                best, best_match = moved, match
            else:
                better = match > best_match
                best = np.where(better[..., None], moved, best)
                best_match = np.maximum(match, best_match)
        return best, best_match


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
