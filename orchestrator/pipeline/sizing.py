"""The output size, decided before any work: which super-resolution factor the restored
video gets (`--scale auto|1|2|4`) within a maximum output height (`--max-height N`).

`auto` restores from the measured real resolution and takes the largest factor (4, 2 or
none) whose output fits the maximum height; footage already at HD_LINES real lines or more
gets none. A model that only makes 4x runs at 4x and its frames are resized down to the
chosen size; the classical model makes 2x and 4x itself."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError

SCALES = ("auto", "1", "2", "4")
MAX_HEIGHT = 2160        # default --max-height: UHD
HD_LINES = 1080          # a real resolution this tall gets no super-resolution by default

# The factors each superres model makes natively; any other runs at its largest and is
# resized down. A model not named here makes 4x only.
NATIVE_FACTORS = {"classical": (2, 4)}


@dataclass(frozen=True)
class Sizing:
    working: tuple[int, int]     # the size the stages before superres work at
    factor: int                  # output = working * factor
    model_factor: int            # what the superres model makes (resized down to factor)
    reason: str                  # why this factor, in words

    @property
    def output(self) -> tuple[int, int]:
        return (self.working[0] * self.factor, self.working[1] * self.factor)

    def describe(self) -> str:
        w, h = self.output
        how = "no super-resolution" if self.factor == 1 else f"super-resolution {self.factor}x"
        if self.model_factor != self.factor:
            how += f" (the model makes {self.model_factor}x, resized down to {self.factor}x)"
        return f"output {w}x{h}: {how}; {self.reason}"


def check_flags(scale: str, max_height: int) -> None:
    if str(scale) not in SCALES:
        raise UserError(f"--scale {scale}: expected auto, 1, 2 or 4")
    if not 16 <= max_height <= 16384:
        raise UserError(f"--max-height {max_height}: expected 16 to 16384 lines")


def decide(working: tuple[int, int], scale: str, max_height: int,
           superres_model: str | None) -> Sizing:
    """The factor for frames restored at ``working`` (the real resolution);
    ``superres_model`` is None when the pipeline has no superres stage."""
    check_flags(scale, max_height)
    width, height = working
    if scale != "auto":
        factor = int(scale)
        if factor > 1 and superres_model is None:
            raise UserError(f"--scale {factor}: the pipeline has no superres stage "
                            "(use --scale auto or 1, or add superres to --stages)")
        if height * factor > max_height:
            raise UserError(f"--scale {factor} makes {width * factor}x{height * factor} from the "
                            f"real resolution {width}x{height}, above --max-height {max_height}: "
                            "use a smaller --scale or a larger --max-height")
        return _sizing(working, factor, superres_model, f"--scale {factor}")
    if height > max_height:
        return _reduced(working, max_height)
    if superres_model is None:
        return _sizing(working, 1, None, "no stage of this pipeline enlarges the frames")
    if height >= HD_LINES:
        return _sizing(working, 1, superres_model,
                       f"the real resolution ({height} lines) is already HD ({HD_LINES}+ lines)")
    for factor in (4, 2):
        if height * factor <= max_height:
            return _sizing(working, factor, superres_model,
                           f"the largest factor within --max-height {max_height} "
                           f"from {height} real lines")
    return _sizing(working, 1, superres_model,
                   f"2x ({2 * height} lines) would pass --max-height {max_height}")


def _sizing(working: tuple[int, int], factor: int, model: str | None, reason: str) -> Sizing:
    if factor == 1:
        return Sizing(working, 1, 1, reason)
    native = NATIVE_FACTORS.get(model or "", (4,))
    model_factor = factor if factor in native else max(native)
    return Sizing(working, factor, model_factor, reason)


def _reduced(working: tuple[int, int], max_height: int) -> Sizing:
    """A real resolution taller than the maximum: restored at the largest size within it
    (even sides, the shape kept)."""
    width, height = working
    new_height = max_height - max_height % 2
    new_width = max(2, round(width * new_height / height / 2) * 2)
    return Sizing((new_width, new_height), 1, 1,
                  f"the real resolution {width}x{height} is taller than --max-height "
                  f"{max_height}: restored at {new_width}x{new_height}")
