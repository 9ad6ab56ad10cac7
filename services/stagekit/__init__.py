"""The runtime every model service shares: the Stage interface, frame codec, temporal
windowing, tiling, weights store and the gRPC server."""
__version__ = "0.1.0"

from .stage import ClipInfo, Stage, StageError

__all__ = ["ClipInfo", "Stage", "StageError"]
