"""What every classical stage shares: parameters, working precision, noise estimation."""
from __future__ import annotations

import logging
import re
from typing import Callable, Iterable, Iterator, TypeVar

import cv2
import numpy as np

from services.stagekit.noise import noise_sigma  # noqa: F401  (the classical models' estimator)
from services.stagekit.parallel import opencv_threads
from services.stagekit.stage import ClipInfo, Stage, StageError

from . import MODEL

log = logging.getLogger("restoration.classical")

FORMATS = ("rgb24", "rgbf16")
opencv_threads()   # the classical stages parallelise over frames themselves
T = TypeVar("T")


class ClassicalStage(Stage):
    """A stage whose parameters are a fixed set of keys, parsed by ``settings``."""

    model = MODEL
    accepts = FORMATS
    backend = f"numpy {np.__version__} opencv {cv2.__version__}"
    params: tuple[str, ...] = ()

    def validate(self, info: ClipInfo) -> None:
        super().validate(info)
        self.settings(info)

    def settings(self, info: ClipInfo):
        """The clip's parameters, parsed and checked (StageError for a bad one)."""
        self.check_known(info)
        return None

    def check_known(self, info: ClipInfo) -> None:
        unknown = sorted(set(info.params) - set(self.params))
        if unknown:
            known = ", ".join(self.params) or "none"
            raise StageError(f"{self.name}: unknown parameter(s) {', '.join(unknown)} "
                             f"(known: {known})")

    @property
    def name(self) -> str:
        return f"{self.task}/{self.model}"

    def fail(self, key: str, value: str, want: str) -> StageError:
        return StageError(f"{self.name}: parameter {key}={value!r} must be {want}")

    def param_float(self, info: ClipInfo, key: str, default: float | None,
                    low: float, high: float, names: dict[str, float] | None = None):
        value = info.params.get(key)
        if value is None or value.strip().lower() in ("", "auto"):
            return default
        text = value.strip().lower()
        if names and text in names:
            return names[text]
        want = f"a number in [{low:g}, {high:g}]"
        if names:
            want += " or one of " + ", ".join(names)
        try:
            number = float(text)
        except ValueError:
            raise self.fail(key, value, want) from None
        if not low <= number <= high:
            raise self.fail(key, value, want)
        return number

    def param_int(self, info: ClipInfo, key: str, default: int, low: int, high: int) -> int:
        value = info.params.get(key)
        if value is None or not value.strip():
            return default
        want = f"an integer in [{low}, {high}]"
        if not re.fullmatch(r"\s*\d+\s*", value):
            raise self.fail(key, value, want)
        number = int(value)
        if not low <= number <= high:
            raise self.fail(key, value, want)
        return number

    def param_choice(self, info: ClipInfo, key: str, choices: tuple[str, ...]) -> str:
        """One of ``choices``; the first is the default."""
        value = info.params.get(key)
        if value is None or not value.strip():
            return choices[0]
        text = value.strip().lower()
        if text not in choices:
            raise self.fail(key, value, "one of " + ", ".join(choices))
        return text

    def param_switch(self, info: ClipInfo, key: str, default: bool = True) -> bool:
        value = info.params.get(key)
        if value is None or not value.strip():
            return default
        text = value.strip().lower()
        if text in ("on", "true", "yes", "1"):
            return True
        if text in ("off", "false", "no", "0"):
            return False
        raise self.fail(key, value, "on or off")

    def param_size(self, info: ClipInfo) -> tuple[int, int] | None:
        """The ``size`` parameter (WxH), or None when not given."""
        value = info.params.get("size", "").strip().lower()
        if not value:
            return None
        match = re.fullmatch(r"(\d+)x(\d+)", value)
        if not match or not all(0 < int(v) <= 16384 for v in match.groups()):
            raise self.fail("size", info.params["size"], "WxH, e.g. 360x240")
        return int(match[1]), int(match[2])


def to_work(frame: np.ndarray) -> np.ndarray:
    """float32 RGB in [0, 255], whatever the clip's pixel format."""
    if frame.dtype == np.uint8:
        return frame.astype(np.float32)
    return frame.astype(np.float32) * 255.0


def from_work(image: np.ndarray, pixel_format: str) -> np.ndarray:
    if pixel_format == "rgb24":
        return to_eight(image)
    return np.clip(image / 255.0, 0.0, 1.0).astype(np.float16)


def to_eight(image: np.ndarray) -> np.ndarray:
    """uint8 of float32 levels, rounded half to even and saturated: numpy's
    clip(rint(x), 0, 255), bit for bit, in two OpenCV passes instead of four numpy ones
    (negative values first to zero: the conversion takes the absolute value)."""
    return cv2.convertScaleAbs(cv2.max(image, 0.0))


def worked(frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    for frame in frames:
        yield to_work(frame)


def delivered(images: Iterable[np.ndarray], pixel_format: str) -> Iterator[np.ndarray]:
    for image in images:
        yield from_work(image, pixel_format)


def resample(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` at ``size`` (width, height): area-averaged down, bicubic up."""
    shrinking = size[0] <= image.shape[1] and size[1] <= image.shape[0]
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrinking
                      else cv2.INTER_CUBIC)


def luma(image: np.ndarray) -> np.ndarray:
    """BT.601 luma of a float32 RGB image, same scale."""
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def grey8(image: np.ndarray) -> np.ndarray:
    """uint8 luma, what the optical flow reads."""
    return np.clip(luma(image) + 0.5, 0, 255).astype(np.uint8)


def mapped(function: Callable[[T], T], items: Iterable[T]) -> Iterator[T]:
    for item in items:
        yield function(item)
