"""The runtime every model service shares: the Stage interface, frame codec, temporal
windowing, tiling, weights store, the gRPC server, and the protection of burned-in
overlays from temporal stages (overlays.py)."""
__version__ = "0.1.0"

from .stage import ClipInfo, Stage, StageError

__all__ = ["ClipInfo", "Stage", "StageError"]
