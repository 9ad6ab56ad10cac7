"""deblur/classical: noise-regularised Wiener deconvolution with a Gaussian PSF.

The blur of old footage (defocus, soft optics, resampling) is modelled as a Gaussian whose
sigma is estimated once per clip from its first frame (the re-blur method of Zhuo & Sim:
at an edge blurred by s, blurring again by s0 lowers the gradient by
sqrt(s^2 + s0^2) / s), unless ``sigma`` is given. Deconvolution is in the frequency domain
on luma only (chroma carries little detail and much noise), regularised by a Laplacian
prior weighted by the clip's noise level, so noise is not amplified into flicker; the
filter is the same for every frame of the clip. ``strength`` scales how far the
restoration goes (0 = none, 1 = moderate, up to 3). Overshoot next to edges is clamped to
the local range of the input, so sharpening leaves no halos.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable, Iterator

import cv2
import numpy as np

from services.stagekit.stage import ClipInfo

from .common import ClassicalStage, delivered, log, luma, noise_sigma, worked

STRENGTHS = {"off": 0.0, "light": 0.5, "moderate": 1.0, "strong": 1.6}
REBLUR = 1.0          # sigma of the re-blur used to measure the blur
NATURAL = 1.3         # apparent sigma of sharp footage's edges, not to be deconvolved
PAD = 16              # reflected border against wrap-around of the FFT
HALO = 1.0            # 8-bit levels an output may exceed its neighbourhood's range by


@dataclass(frozen=True)
class DeblurSettings:
    strength: float
    sigma: float | None


class DeblurStage(ClassicalStage):
    task = "deblur"
    window = (0, 0)
    max_batch = 8
    params = ("strength", "sigma")

    def settings(self, info: ClipInfo) -> DeblurSettings:
        self.check_known(info)
        return DeblurSettings(
            strength=self.param_float(info, "strength", 1.0, 0.0, 3.0, STRENGTHS),
            sigma=self.param_float(info, "sigma", None, 0.0, 5.0))

    def process(self, info: ClipInfo, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        settings = self.settings(info)
        restorer = None
        for image in worked(frames):
            if restorer is None:
                restorer = Restorer.for_clip(image, settings)
                log.info("%s clip %s: blur sigma %.2f (%s), noise %.1f, strength %.2f",
                         self.name, info.clip_id, restorer.sigma,
                         "given" if settings.sigma is not None else "estimated",
                         restorer.noise, settings.strength)
            yield from delivered([restorer(image)], info.pixel_format)


def estimate_blur(y: np.ndarray) -> float:
    """Gaussian blur sigma of a luma image, from its strongest edges."""
    smooth = cv2.GaussianBlur(y, (0, 0), 0.5)
    grad = cv2.magnitude(cv2.Sobel(smooth, cv2.CV_32F, 1, 0), cv2.Sobel(smooth, cv2.CV_32F, 0, 1))
    reblurred = cv2.GaussianBlur(smooth, (0, 0), REBLUR)
    grad2 = cv2.magnitude(cv2.Sobel(reblurred, cv2.CV_32F, 1, 0),
                          cv2.Sobel(reblurred, cv2.CV_32F, 0, 1))
    edges = grad > np.percentile(grad, 98)
    if edges.sum() < 32 or grad[edges].mean() < 8.0:
        return 0.0
    ratio = grad[edges] / np.maximum(grad2[edges], 1e-3)
    ratio = ratio[ratio > 1.0 + 1e-3]
    if ratio.size == 0:
        return 0.0
    sigma = float(np.median(REBLUR / np.sqrt(ratio ** 2 - 1.0)))
    # What was measured includes the 0.5 pre-smoothing (against noise) and the softness
    # that natural edges have before any blur; only the rest is to be undone.
    return float(np.sqrt(max(sigma ** 2 - 0.25 - NATURAL ** 2, 0.0)))


@functools.lru_cache(maxsize=8)
def wiener_filter(shape: tuple[int, int], sigma: float, balance: float) -> np.ndarray:
    """conj(H) / (|H|^2 + balance |L|^2) for a Gaussian H, on cv2.dft's complex layout."""
    height, width = shape
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[None, :]
    w2 = (2 * np.pi) ** 2 * (fx ** 2 + fy ** 2)
    h = np.exp(-0.5 * sigma ** 2 * w2)
    laplacian = (4 - 2 * np.cos(2 * np.pi * fx) - 2 * np.cos(2 * np.pi * fy)) ** 2
    gain = h / (h * h + balance * laplacian)
    return np.repeat(gain[..., None], 2, axis=2).astype(np.float32)


class Restorer:
    def __init__(self, sigma: float, noise: float, strength: float):
        self.sigma = sigma
        self.noise = noise
        self.strength = strength
        # Regularisation grows with the noise (Wiener: noise-to-signal), and shrinks with
        # strength; the floor keeps compression artefacts from being boosted.
        self.balance = (max(noise, 1.0) / 255.0) ** 2 * 300.0 / max(strength, 1e-3)

    @classmethod
    def for_clip(cls, image: np.ndarray, settings: DeblurSettings) -> "Restorer":
        y = luma(image)
        sigma = settings.sigma if settings.sigma is not None else estimate_blur(y)
        return cls(sigma, noise_sigma(y), settings.strength)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if self.strength <= 0 or self.sigma < 0.3:
            return image
        y = luma(image)
        sharp = self.deconvolve(y)
        sharp = self.without_halos(sharp, y)
        return image + (sharp - y)[..., None]

    def deconvolve(self, y: np.ndarray) -> np.ndarray:
        height, width = y.shape
        padded = cv2.copyMakeBorder(y, PAD, PAD, PAD, PAD, cv2.BORDER_REFLECT)
        fh = cv2.getOptimalDFTSize(padded.shape[0])
        fw = cv2.getOptimalDFTSize(padded.shape[1])
        padded = cv2.copyMakeBorder(padded, 0, fh - padded.shape[0], 0, fw - padded.shape[1],
                                    cv2.BORDER_REFLECT)
        spectrum = cv2.dft(padded, flags=cv2.DFT_COMPLEX_OUTPUT)
        spectrum *= wiener_filter((fh, fw), self.sigma, self.balance)
        out = cv2.idft(spectrum, flags=cv2.DFT_SCALE | cv2.DFT_REAL_OUTPUT)
        return out[PAD:PAD + height, PAD:PAD + width]

    def without_halos(self, sharp: np.ndarray, y: np.ndarray) -> np.ndarray:
        size = max(3, 2 * int(np.ceil(1.5 * self.sigma)) + 1)
        kernel = np.ones((size, size), np.uint8)
        return np.clip(sharp, cv2.erode(y, kernel) - HALO, cv2.dilate(y, kernel) + HALO)
