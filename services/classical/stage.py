"""The classical stages, one per task, for ``services.stagekit.server.main``."""
from __future__ import annotations

from pathlib import Path

from services.stagekit.stage import Stage, StageError

from .analog import AnalogStage
from .colorize import ColorizeStage
from .deblur import DeblurStage
from .deinterlace import DeinterlaceStage
from .denoise import DenoiseStage
from .interpolate import InterpolateStage
from .outpaint import OutpaintStage
from .superres import SuperresStage

STAGES = (DeinterlaceStage, AnalogStage, OutpaintStage, ColorizeStage, DeblurStage, DenoiseStage,
          SuperresStage, InterpolateStage)


def create_stage(weights: Path | None = None, device: str = "auto",
                 arch: Path | None = None) -> list[Stage]:
    """Every classical stage. They run on the CPU and have no weights or network
    configuration, so ``weights`` and ``arch`` must be absent."""
    if weights is not None or arch is not None:
        raise StageError("the classical models take no --weights or --arch")
    if device not in ("auto", "cpu"):
        raise StageError(f"the classical models run on the CPU, not {device}")
    return [stage() for stage in STAGES]
