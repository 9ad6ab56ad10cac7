"""analog/classical, VHS damage: line jitter, dropouts, chroma delay and chroma bleed.

Each repair first measures its damage and does nothing where it is not there: a clean
clip comes out unchanged (services/classical/tests/test_vhs.py).

- Line jitter (time-base error): each line is cross-correlated (locally zero-mean luma,
  lags of a few pixels, sub-pixel by a parabola through the peak) with the lines one and
  two below it; the lines' shifts are the least-squares solution of those differences
  (the picture's own slant, slow down the frame, taken out), and each line is moved back
  with cv2.remap.
- Dropouts: one-line streaks, brighter or darker than both the line above and below by
  far, at least a few pixels long, and not there in the previous and next frames warped
  onto this one (analog.py's impulse pass, whose optical flow they share), which agree.
  They are filled with the median of those two and the mean of the lines above and below
  (the median rejects whichever of the three the flow got wrong).
- Chroma delay and bleed, measured on the first frame. The delay: the shift of the luma
  (blurred across) that explains the chroma best by local linear regression (a guided
  filter's model; a cross-correlation of gradient profiles was tried first and mistook
  the bleed's one-sided edges on soft chroma for a delay of 2 px). The bleed: the blur
  across that turns the power spectrum of the chroma's columns into that of its rows
  (see ``horizontal_blur``). The delay is undone by shifting the chroma back (sub-pixel);
  the bleed by Wiener deconvolution of the chroma rows, and then the chroma gets back the
  luma's detail that deconvolution cannot restore, scaled by the local slope of chroma on
  the luma blurred and deconvolved alike (a guided filter's model): where colour follows
  brightness, colour edges sharpen with the luma's; where it does not, nothing more
  moves. That repair is smoothed down the rows and cored, so that the 8-bit noise the
  deconvolution amplifies stays out (``sharpen_towards``): 21 % less chroma error on
  cockatoo, 26 % on bikes (bench/quality.py), 7 to 25 % on seven clips not tuned on.

Chroma is handled as R - Y and B - Y with BT.601 luma, so the luma is never touched.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Iterable, Iterator

import cv2
import numpy as np

from services.stagekit.windowing import neighbourhoods

from .common import log, luma

LUMA = np.array([0.299, 0.587, 0.114], np.float32)
MEASURED_FRAMES = 1        # frames the chroma delay and bleed are measured on

# Below these the damage is not there (clean clips measure under a third of them).
JITTER_FLOOR = 0.3         # median |shift| of the textured lines, pixels
DELAY_FLOOR = 1.75         # pixels (cockatoo's own chroma sits up to 1.5 off)
BLEED_FLOOR = 1.5          # gaussian sigma, pixels
JITTER_LAGS = 3
JITTER_PRIOR = 0.3        # weight of a row's own shift against the measured ones
JITTER_TREND = 21         # rows
DROPOUT_LEVEL = 40.0       # how far a dropout stands out from the lines around it
DROPOUT_LENGTH = 5         # shortest streak, pixels
BLEED_SIGMAS = np.arange(0.0, 5.01, 1.0, dtype=np.float32)
BLEED_FIT = np.arange(0.0, 8.001, 0.05)        # the bleeds the spectra are fitted with
BLEED_FREQS = np.linspace(0.02, 0.3, 29)       # cycles per pixel fitted
BLEED_NOISE_FROM = 0.4                         # cycles per pixel
AXIS_BINS = 2              # of the 2-D spectrum's axes, how far off each is summed
DELAYS = np.arange(-6.0, 6.01, 1.0, dtype=np.float32)
BLEED_NOISE = 0.05         # Wiener regularisation
BLEED_DOWN = 1.0           # gaussian sigma, rows, of the smoothing of the chroma's repair
BLEED_CORE = 0.3           # levels of R - Y, B - Y: smaller repairs are 8-bit noise
GREY = 10.0                # chroma variance (levels^2) below which a picture is grey
PRESENT = 0.98             # residual ratio below which a delay or a blur is there


@dataclass(frozen=True)
class VhsMeasure:
    delay: float           # chroma delay, pixels to the right
    bleed: float           # chroma blur, gaussian sigma in pixels (0: none)


# ---- helpers -----------------------------------------------------------------------------

def split_chroma(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Luma, R - Y and B - Y of a float32 RGB image."""
    y = luma(image)
    return y, image[..., 0] - y, image[..., 2] - y


def merge_chroma(y: np.ndarray, cr: np.ndarray, cb: np.ndarray) -> np.ndarray:
    r, b = y + cr, y + cb
    g = (y - LUMA[0] * r - LUMA[2] * b) / LUMA[1]
    return cv2.merge([r, g, b])


def gradient_x(plane: np.ndarray) -> np.ndarray:
    return cv2.Sobel(plane, cv2.CV_32F, 1, 0, ksize=3)


def shift_rows(plane: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Each row ``y`` of ``plane`` read ``shifts[y]`` pixels to the right (sub-pixel)."""
    height, width = plane.shape[:2]
    map_x = np.arange(width, dtype=np.float32)[None, :] + shifts.astype(np.float32)[:, None]
    map_y = np.repeat(np.arange(height, dtype=np.float32)[:, None], width, axis=1)
    return cv2.remap(plane, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


def peak_lags(scores: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """Per column of ``scores`` (lags along axis 0), the sub-pixel lag of the maximum."""
    best = scores.argmax(axis=0)
    inner = np.clip(best, 1, len(lags) - 2)
    cols = np.arange(scores.shape[1])
    left, mid, right = scores[inner - 1, cols], scores[inner, cols], scores[inner + 1, cols]
    curve = left - 2 * mid + right
    offset = np.where(curve < 0, 0.5 * (left - right) / np.where(curve < 0, curve, -1), 0.0)
    offset = np.where(best == inner, np.clip(offset, -0.5, 0.5), 0.0)
    return lags[best] + offset


def correlate_rows(moving: np.ndarray, reference: np.ndarray, reach: int) -> np.ndarray:
    """Per row, the lag (in [-reach, reach]) at which ``moving`` best matches ``reference``:
    moving(x + lag) ~ reference(x). Returns (lags, scores) with scores (2 reach + 1, rows)."""
    width = moving.shape[1]
    ref = reference[:, reach:width - reach]
    return np.stack([np.einsum("ij,ij->i", moving[:, reach + lag:width - reach + lag], ref)
                     for lag in range(-reach, reach + 1)])


# ---- line jitter ----------------------------------------------------------------------------

def row_shifts(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's shift against the mean of its neighbours, and whether it has the
    texture to tell."""
    # Locally zero-mean luma: it matches the neighbours' far better than its gradient does
    # (correlation with the true relative shifts 0.99 against 0.72 on cockatoo).
    g = y - cv2.blur(y, (31, 1), borderType=cv2.BORDER_REFLECT)
    neighbours = np.empty_like(g)
    neighbours[1:-1] = 0.5 * (g[:-2] + g[2:])
    neighbours[0], neighbours[-1] = g[1], g[-2]
    lags = np.arange(-JITTER_LAGS, JITTER_LAGS + 1, dtype=np.float32)
    scores = correlate_rows(g, neighbours, JITTER_LAGS)
    energy = np.einsum("ij,ij->i", g, g)
    textured = energy > 0.25 * np.median(energy) + 1e-3
    return np.where(textured, peak_lags(scores, lags), 0.0).astype(np.float32), textured


def measure_jitter(y: np.ndarray) -> float:
    shifts, textured = row_shifts(y)
    return float(np.median(np.abs(shifts[textured]))) if textured.any() else 0.0


def line_shifts(y: np.ndarray) -> np.ndarray:
    """Each row's jitter, by least squares over the measured shifts between rows one and
    two apart (s[i + gap] - s[i] ~ shift), with each row's own shift kept small.

    A row measured against its neighbours' mean and moved onto it, a few rounds over,
    recovered 3.5 dB less (bench/quality.py): the neighbours are jittered too. The shifts
    between rows also hold the picture's own slant (a sloping edge), which changes slowly
    down the frame while jitter is drawn afresh per line: their trend over JITTER_TREND
    rows is taken out first."""
    g = y - cv2.blur(y, (31, 1), borderType=cv2.BORDER_REFLECT)
    energy = np.einsum("ij,ij->i", g, g)
    energy = np.clip(energy / (np.median(energy) + 1e-6), 0.0, 1.0)
    lags = np.arange(-JITTER_LAGS, JITTER_LAGS + 1, dtype=np.float32)
    count = y.shape[0]
    normal = JITTER_PRIOR * np.eye(count)
    rhs = np.zeros(count)
    for gap in (1, 2):
        shift = peak_lags(correlate_rows(g[gap:], g[:-gap], JITTER_LAGS), lags)
        shift = shift - cv2.blur(shift.reshape(-1, 1).astype(np.float32), (1, JITTER_TREND),
                                 borderType=cv2.BORDER_REFLECT).ravel()
        weight = np.minimum(energy[gap:], energy[:-gap])
        first = np.arange(count - gap)
        second = first + gap
        normal[first, first] += weight
        normal[second, second] += weight
        normal[first, second] -= weight
        normal[second, first] -= weight
        np.add.at(rhs, second, weight * shift)
        np.add.at(rhs, first, -weight * shift)
    # OpenCV's Cholesky: numpy's LAPACK spins up its thread pool for each small solve,
    # a hundred times slower here.
    _, shifts = cv2.solve(normal, rhs.reshape(-1, 1), flags=cv2.DECOMP_CHOLESKY)
    return shifts.ravel().astype(np.float32)


def straighten(image: np.ndarray) -> np.ndarray:
    return shift_rows(image, line_shifts(luma(image)))


def straighten_lines(images: Iterable[np.ndarray], clip_id: str) -> Iterator[np.ndarray]:
    images = iter(images)
    first = next(images, None)
    if first is None:
        return
    jitter = measure_jitter(luma(first))
    images = itertools.chain([first], images)
    if jitter < JITTER_FLOOR:
        yield from images
        return
    log.info("analog/classical clip %s: line jitter %.2f px, straightening", clip_id, jitter)
    for image in images:
        yield straighten(image)


# ---- dropouts -------------------------------------------------------------------------------

def dropout_mask(y: np.ndarray, y_prev: np.ndarray, y_next: np.ndarray) -> np.ndarray:
    up, down = np.empty_like(y), np.empty_like(y)
    up[1:], up[0] = y[:-1], y[1]
    down[:-1], down[-1] = y[1:], y[-2]
    du, dd = y - up, y - down
    streak = (du * dd > 0) & (np.minimum(np.abs(du), np.abs(dd)) > DROPOUT_LEVEL)
    # Not there a frame before and after, which agree with each other (a thin real line
    # persists); at the clip's ends the one neighbour there decides.
    dp, dn = y - y_prev, y - y_next
    gone = ((dp * dn > 0) & (np.minimum(np.abs(dp), np.abs(dn)) > 0.5 * DROPOUT_LEVEL)
            & (np.abs(y_prev - y_next) < DROPOUT_LEVEL))
    mask = (streak & gone).astype(np.uint8)
    return cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((1, DROPOUT_LENGTH), np.uint8))


def fill_dropouts(image: np.ndarray, prev: np.ndarray, nxt: np.ndarray,
                  y: np.ndarray, y_prev: np.ndarray, y_next: np.ndarray) -> tuple[np.ndarray, int]:
    """``image`` with its dropouts filled; ``prev`` and ``nxt`` are its neighbouring frames
    warped onto it (motion-compensated), ``y*`` the three lumas."""
    mask = dropout_mask(y, y_prev, y_next)
    if not mask.any():
        return image, 0
    # A dropout's ends fade into the picture: one pixel more each way.
    rows, cols = np.nonzero(cv2.dilate(mask, np.ones((1, 3), np.uint8)))
    above = np.where(rows > 0, rows - 1, rows + 1)
    below = np.where(rows < image.shape[0] - 1, rows + 1, rows - 1)
    vertical = 0.5 * (image[above, cols] + image[below, cols])
    median = np.median(np.stack([prev[rows, cols], nxt[rows, cols], vertical]), axis=0)
    out = image.copy()
    out[rows, cols] = median
    return out, len(rows)


def dropout_rate(images: list[np.ndarray]) -> float:
    """The share of the pixels of ``images`` (three or more) that are dropouts."""
    lumas = [luma(image) for image in images]
    masks = [dropout_mask(cur, prev, nxt) for prev, cur, nxt in zip(lumas, lumas[1:], lumas[2:])]
    return float(np.mean([m.mean() for m in masks])) if masks else 0.0


# ---- chroma delay and bleed ----------------------------------------------------------------

def measure_chroma(images: list[np.ndarray]) -> VhsMeasure:
    """The chroma's delay and blur. The delay: the shift (with a horizontal blur) of the
    luma that explains the chroma best by local linear regression (a guided filter's
    model), searched in whole pixels at a middling blur, then the blur at that delay (to
    half a pixel), then the delay again, down to a quarter pixel; kept only where it
    explains the chroma markedly better than none: a clean clip's chroma is best
    explained by its own luma unshifted, within a few hundredths. The blur: see
    ``horizontal_blur``."""
    # Every other row is enough (both damages are horizontal), at half the time.
    planes = [tuple(plane[::2] for plane in split_chroma(image)) for image in images]
    colour = np.mean([cr.var() + cb.var() for _, cr, cb in planes])
    if colour < GREY:
        return VhsMeasure(0.0, 0.0)   # a black-and-white picture: no colour to be late

    def residual(sigma: float, delay: float) -> float:
        total = 0.0
        for y, cr, cb in planes:
            model = LocalRegression(shift_plane(blur_across(y, sigma), delay), (9, 3))
            total += model.residual(cr) + model.residual(cb)
        return total

    def refined(best: float, steps, score) -> float:
        for step in steps:
            best = min((best - step, best, best + step), key=score)
        return float(best)

    delay = float(min(DELAYS, key=lambda d: residual(2.0, float(d))))
    sigma = float(min(BLEED_SIGMAS, key=lambda s: residual(float(s), delay)))
    sigma = max(0.0, refined(sigma, (0.5,), lambda s: residual(max(s, 0.0), delay)))
    delay = refined(delay, (1.0, 0.5, 0.25), lambda d: residual(sigma, d))
    delay = delay if residual(sigma, delay) < PRESENT * residual(sigma, 0.0) else 0.0
    bleed = horizontal_blur([split_chroma(image) for image in images])
    return VhsMeasure(delay if abs(delay) >= DELAY_FLOOR else 0.0, bleed)


def horizontal_blur(planes: list[tuple[np.ndarray, ...]]) -> float:
    """How much more the chroma is blurred across than down (0.0: not more, or not by
    BLEED_FLOOR), from power spectra of the chroma along its rows and down its columns:
    a horizontal gaussian of sigma s multiplies the first by exp(-4 pi^2 s^2 f^2) and
    leaves the second (see ``fitted_blur``). Natural chroma, soft as it may be, is as
    soft down as across.

    Two pairs of spectra. Those of whole rows and columns tell a bleed from none (clean
    clips read at most 1.05 px), but read it low (1.65 px for 3.4): a bleed also takes
    from the columns' spectrum the detail that varies across. Those of the 2-D spectrum
    along its axes (the columns' at no variation across) read it within 15 % (3.15 for
    3.24, 2.95 for 2.58 on bikes), but read 2 px on some clean clips (tape_sim, an old
    analog capture): the first pair finds the bleed, the second its width. The local
    regression on blurred luma used before found 5.5 px where the bleed was 2.65 (its
    model is only as good as colour follows brightness), and the deconvolution then made
    the chroma worse than untouched: a repair for 30 % more bleed than there is wins
    nothing, for 30 % less still most of what the true width wins."""
    if fitted_blur(planes, line_spectra) < BLEED_FLOOR:
        return 0.0
    width = fitted_blur(planes, axis_spectra)
    return width if width >= BLEED_FLOOR else 0.0


def fitted_blur(planes: list[tuple[np.ndarray, ...]], spectra_of) -> float:
    """The bleed that, with the noise (the rows' spectrum above BLEED_NOISE_FROM cycles
    per pixel, where a bleed leaves nothing else), turns the chroma's columns' spectrum
    times the luma's own ratio of rows to columns (a picture's texture need not be alike
    both ways) into its rows', fitted in log, weighted by the columns' signal to noise.
    ``spectra_of(plane)``: rows', columns' and noise at BLEED_FREQS."""
    spectra = np.zeros((3, 3, len(BLEED_FREQS)))
    for frame in planes:
        for index, plane in enumerate(frame):
            spectra[index] += spectra_of(plane)
    y_rows, y_cols, _ = spectra[0]
    texture = np.log(np.maximum(y_rows, 1e-9) / np.maximum(y_cols, 1e-9))
    attenuation = np.exp(-4 * np.pi ** 2 * np.outer(BLEED_FIT ** 2, BLEED_FREQS ** 2))
    misfit = np.zeros(len(BLEED_FIT))
    for rows, cols, noise in spectra[1:]:
        signal = np.maximum(cols - noise, 1e-9)
        weight = np.clip(signal / np.maximum(noise, 1e-9), 0.0, 20.0)
        model = signal * np.exp(texture) * attenuation + noise
        misfit += (weight * (np.log(np.maximum(rows, 1e-9)) - np.log(model)) ** 2).sum(axis=1)
    return float(BLEED_FIT[misfit.argmin()])


def line_spectra(plane: np.ndarray) -> np.ndarray:
    """The mean power spectrum of the rows and of the columns of ``plane`` (each less its
    mean, Hann-windowed), and the rows' noise floor."""
    height, width = plane.shape
    across, down = np.hanning(width), np.hanning(height)
    rows = np.abs(np.fft.rfft((plane - plane.mean(axis=1, keepdims=True)) * across,
                              axis=1)) ** 2
    cols = np.abs(np.fft.rfft((plane - plane.mean(axis=0, keepdims=True)) * down[:, None],
                              axis=0)) ** 2
    return at_fitted(rows.mean(axis=0) / (across ** 2).sum(),
                     cols.mean(axis=1) / (down ** 2).sum())


def axis_spectra(plane: np.ndarray) -> np.ndarray:
    """The 2-D power spectrum of ``plane`` (Hann-windowed) along its axes: across at
    vertical frequencies within AXIS_BINS of none, down at horizontal ones within them,
    each smoothed over about 0.015 cycles per pixel; and the noise floor across."""
    height, width = plane.shape
    window = np.outer(np.hanning(height), np.hanning(width))
    power = np.abs(np.fft.fft2((plane - plane.mean()) * window)) ** 2 / (window ** 2).sum()
    near = lambda count: np.r_[0:AXIS_BINS + 1, count - AXIS_BINS:count]
    rows = power[near(height)].sum(axis=0)[:width // 2 + 1]
    cols = power[:, near(width)].sum(axis=1)[:height // 2 + 1]
    return at_fitted(smoothed(rows), smoothed(cols))


def smoothed(spectrum: np.ndarray) -> np.ndarray:
    """``spectrum`` (of a line of 2 (len - 1) pixels) averaged over about 0.015 cycles
    per pixel: a periodogram's single bins scatter by their own size."""
    size = 2 * int(round(0.015 * (len(spectrum) - 1))) + 1
    padded = np.pad(spectrum, size // 2, mode="edge")
    return np.convolve(padded, np.ones(size) / size, mode="valid")


def at_fitted(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Rows' and columns' spectra (from frequency 0 to 0.5) at BLEED_FREQS, and the rows'
    noise floor."""
    f_rows, f_cols = np.linspace(0, 0.5, len(rows)), np.linspace(0, 0.5, len(cols))
    noise = rows[f_rows > BLEED_NOISE_FROM].mean()
    return np.array([np.interp(BLEED_FREQS, f_rows, rows), np.interp(BLEED_FREQS, f_cols, cols),
                     np.full(len(BLEED_FREQS), noise)])


def shift_plane(plane: np.ndarray, dx: float) -> np.ndarray:
    """``plane`` moved ``dx`` pixels right (sub-pixel, edges repeated)."""
    if not dx:
        return plane
    matrix = np.float32([[1, 0, dx], [0, 1, 0]])
    return cv2.warpAffine(plane, matrix, plane.shape[1::-1], flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


class LocalRegression:
    """Box-window least squares of planes on a guide (a guided filter's linear model)."""

    def __init__(self, guide: np.ndarray, window: tuple[int, int], eps: float = 25.0):
        self.guide, self.window = guide, window
        self.mean_g = self.mean(guide)
        self.var_g = self.mean(guide * guide) - self.mean_g ** 2 + eps

    def mean(self, plane: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(plane, -1, self.window, borderType=cv2.BORDER_REFLECT)

    def slope(self, plane: np.ndarray) -> np.ndarray:
        return (self.mean(self.guide * plane) - self.mean_g * self.mean(plane)) / self.var_g

    def residual(self, plane: np.ndarray) -> float:
        mean_p = self.mean(plane)
        variance = self.mean(plane * plane) - mean_p ** 2
        return float(np.mean(variance - self.slope(plane) ** 2 * self.var_g))


def blur_across(plane: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return plane
    size = 2 * int(np.ceil(3 * sigma)) + 1
    return cv2.GaussianBlur(plane, (size, 1), sigma, borderType=cv2.BORDER_REFLECT)


def mend_chroma(image: np.ndarray, measure: VhsMeasure) -> np.ndarray:
    y, cr, cb = split_chroma(image)
    if measure.delay:
        back = np.full(image.shape[0], measure.delay, np.float32)
        cr, cb = shift_rows(cr, back), shift_rows(cb, back)
    if measure.bleed:
        cr, cb = sharpen_towards(y, (cr, cb), measure.bleed)
    return merge_chroma(y, cr, cb)


def sharpen_towards(y: np.ndarray, planes: tuple[np.ndarray, ...],
                    sigma: float) -> list[np.ndarray]:
    """Each chroma plane deconvolved, plus the luma's detail that deconvolution cannot
    bring back, scaled by the local slope of chroma on the luma blurred and deconvolved
    alike: where colour follows brightness, colour edges sharpen with the luma's.

    The repair (that, less the plane) is then smoothed down the rows and cored: the bleed
    is across only, so its repair is alike on neighbouring rows (a vertical edge's most
    of all), while the noise the deconvolution amplifies (8-bit rounding of the damaged
    chroma) is drawn afresh on each; and a repair under BLEED_CORE is mostly that noise.
    Half of the chroma error (bench/quality.py) is one 8-bit level off, on flat colour the
    bleed barely moved: deconvolution alone added as many such errors as it removed at
    edges (15 % on cockatoo); smoothed and cored, 20 %."""
    soft = unblur_across(blur_across(y, sigma), sigma)
    model = LocalRegression(soft, (7, 5))
    detail = y - soft
    size = 2 * int(np.ceil(3 * BLEED_DOWN)) + 1
    out = []
    for plane in planes:
        restored = unblur_across(plane, sigma)
        restored += model.mean(model.slope(restored)) * detail
        repair = cv2.GaussianBlur(restored - plane, (1, size), 0, sigmaY=BLEED_DOWN,
                                  borderType=cv2.BORDER_REFLECT)
        out.append(plane + np.sign(repair) * np.maximum(np.abs(repair) - BLEED_CORE, 0.0))
    return out


def unblur_across(plane: np.ndarray, sigma: float) -> np.ndarray:
    """Wiener deconvolution of a horizontal gaussian blur: one short kernel along the rows
    (a ninth of the time of numpy's FFT of each row)."""
    return cv2.filter2D(plane, -1, unblur_kernel(sigma), borderType=cv2.BORDER_REFLECT)


@functools.lru_cache(maxsize=8)
def unblur_kernel(sigma: float) -> np.ndarray:
    """The Wiener inverse of a gaussian of ``sigma``, as a row kernel. Its regularisation
    grows as the blur's response falls, so that flat colour keeps its level."""
    size = 256
    response = np.exp(-2 * (np.pi * sigma * np.fft.rfftfreq(size)) ** 2)
    inverse = response / (response ** 2 + BLEED_NOISE * (1 - response))
    taps = np.fft.fftshift(np.fft.irfft(inverse, size))
    reach = 4 * int(np.ceil(3 * sigma))        # beyond it the taps are below 1e-4
    kernel = taps[size // 2 - reach:size // 2 + reach + 1]
    return (kernel / kernel.sum()).astype(np.float32)[None, :]


def mend_colour(images: Iterable[np.ndarray], clip_id: str) -> Iterator[np.ndarray]:
    images = iter(images)
    head = list(itertools.islice(images, MEASURED_FRAMES))
    if not head:
        return
    measure = measure_chroma(head)
    images = itertools.chain(head, images)
    if not (measure.delay or measure.bleed):
        yield from images
        return
    log.info("analog/classical clip %s: chroma delay %.2f px, chroma bleed %.2f px",
             clip_id, measure.delay, measure.bleed)
    for image in images:
        yield mend_chroma(image, measure)
