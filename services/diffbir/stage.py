"""The superres stage: DiffBIR stage 1 inside the authors' ``inference.py --task sr``.

What the authors do (v2.1, the default, and v1; see ``pipeline.py``), kept exactly:
- Pillow bicubic 4x of the uint8 frame; / 255, clamped; that size is the output size;
- whole frame (their default): short edge raised to 512 (antialiased bicubic, long edge
  truncated), zero-padded to multiples of 64, SwinIR, cropped;
- tiled (their ``--cleaner_tiled``; tiles of 512, stride 256 by default): Gaussian-blended
  tiles at the upscaled size, then the short edge raised to 512; a frame smaller than a
  tile takes the whole-frame path;
- antialiased bicubic back to the output size; uint8 by x * 255 clamped and truncated;
- on CUDA, fp16 autocast around the network (their ``--precision fp16`` default).

Stage 2 (IRControlNet sampling on Stable Diffusion) is dropped, as the seed project did:
the authors' ``Pipeline.run`` then gives exactly the stage-1 output resized back, since
its wavelet colour fix of x against itself is x. It fits in ``restore`` between the
cleaner and the resize; ``schedule.py`` holds its (checked) noise schedules.

What we add: frames are independent, so a clip streams through in batches of ``batch``
frames and nothing else is held; ``rgbf16`` frames are upscaled by the same bicubic in
float (no 8-bit step) and given back clamped to [0, 1], unquantised.

Per clip, the header's params may set ``tiled`` (0/1), ``tile_size``, ``tile_stride`` and
``batch``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import torch

from services.stagekit.device import pick_device
from services.stagekit.neural import NeuralStage, default_batch, file_identity, load_into
from services.stagekit.stage import ClipInfo, StageError
from services.stagekit.weights import WeightsError, checkpoint_file, load_checkpoint, unwrap
from services.stagekit.windowing import batches

from . import MODEL, TASK
from .network import SwinIR, build_swinir, load_arch
from .pipeline import (PAD_MULTIPLE, apply_cleaner, float_upscale, pillow_upscale, quantise,
                       resize_to)

UPSCALE = 4             # inference.py --upscale default
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class Settings:
    """How frames meet the network; the defaults are the authors' (whole frames)."""

    tiled: bool = False
    tile_size: int = 512
    tile_stride: int = 256
    batch: int = 1

    def check(self) -> "Settings":
        if self.tiled and (self.tile_size < PAD_MULTIPLE or self.tile_size % PAD_MULTIPLE):
            raise StageError(f"tile_size must be a multiple of {PAD_MULTIPLE}, "
                             f"not {self.tile_size}")
        if self.tiled and not 0 < self.tile_stride <= self.tile_size:
            raise StageError(f"tile_stride must be in [1, tile_size={self.tile_size}], "
                             f"not {self.tile_stride}")
        if self.batch < 1:
            raise StageError(f"batch must be at least 1, not {self.batch}")
        return self

    def with_params(self, params: Mapping[str, str]) -> "Settings":
        changes: dict = {}
        if "tiled" in params:
            changes["tiled"] = parse_flag(params["tiled"])
        for key in ("tile_size", "tile_stride", "batch"):
            if key in params:
                try:
                    changes[key] = int(params[key])
                except ValueError:
                    raise StageError(f"{key} must be an integer, not {params[key]!r}") from None
        return replace(self, **changes).check()


def parse_flag(value: str) -> bool:
    text = str(value).strip().lower()
    if text not in TRUE + FALSE:
        raise StageError(f"tiled must be 0 or 1, not {value!r}")
    return text in TRUE


class DiffBIRStage(NeuralStage):
    task = TASK
    model = MODEL
    scale = UPSCALE
    window = (0, 0)
    max_batch = 4

    def __init__(self, network: SwinIR, device="cpu", half: bool | None = None,
                 identity: str = "", settings: Settings | None = None):
        super().__init__(network, device, half=half, identity=identity)
        self.settings = (settings or Settings()).check()
        self.backend = self.torch_backend()

    def describe(self) -> dict:
        s = self.settings
        return {**super().describe(), "upscale": UPSCALE, "tiled": s.tiled,
                "tile_size": s.tile_size, "tile_stride": s.tile_stride, "batch": s.batch,
                **self.precision()}

    def validate(self, info: ClipInfo) -> None:
        super().validate(info)
        self.settings.with_params(info.params)

    def process(self, info: ClipInfo, frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        settings = self.settings.with_params(info.params)
        for group in batches(frames, settings.batch):
            x = self.upscaled(np.stack(group))
            yield from self.to_frames(self.restore(x, settings), info.pixel_format)

    def upscaled(self, frames: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) frames -> (B, 3, 4H, 4W) float32 in [0, 1] on the device."""
        if frames.dtype == np.uint8:
            big = np.stack([pillow_upscale(frame, UPSCALE) for frame in frames])
            x = torch.from_numpy(big).to(self.device, torch.float32).div(255).clamp(0, 1)
            return x.permute(0, 3, 1, 2).contiguous()
        x = torch.from_numpy(frames).to(self.device, torch.float32).permute(0, 3, 1, 2)
        return float_upscale(x.contiguous(), UPSCALE)

    @torch.inference_mode()
    def restore(self, x: torch.Tensor, settings: Settings | None = None) -> torch.Tensor:
        """Upscaled frames -> the restored frames at the same size, float32, unclamped."""
        return resize_to(self.clean(x, settings), tuple(x.shape[-2:]))

    @torch.inference_mode()
    def clean(self, x: torch.Tensor, settings: Settings | None = None) -> torch.Tensor:
        """Stage 1: the cleaner's output (short edge at least 512), float32."""
        settings = settings or self.settings
        tile = settings.tile_size if settings.tiled else None
        return apply_cleaner(self.forward, x, tile, settings.tile_stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.network(x).float()

    @staticmethod
    def to_frames(values: torch.Tensor, pixel_format: str) -> list[np.ndarray]:
        out = quantise(values) if pixel_format == "rgb24" else values.clamp(0, 1).half()
        return list(out.permute(0, 2, 3, 1).contiguous().cpu().numpy())


# --- building the stage ----------------------------------------------------------------

def checkpoint_path(weights: Path | str | None) -> Path:
    """The checkpoint: a file; inside a folder (directly or in the store's layout), the
    manifest's files in order (v2.1 first, then v1); None is the weights store."""
    return checkpoint_file(MODEL, weights)


def read_state(path: Path) -> dict:
    """The state dict as the authors' ``load_model_from_url`` takes it: the 'state_dict'
    entry when there is one (the v1 Lightning .ckpt), a 'module.' prefix removed when the
    first key has it (a DataParallel save)."""
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, dict):
        raise WeightsError(f"{path} holds a {type(checkpoint).__name__}, not a state dict")
    state = unwrap(checkpoint, "state_dict") if "state_dict" in checkpoint else dict(checkpoint)
    first = next(iter(state), "")
    return unwrap(state, None, "module.") if first.startswith("module") else state


def load_network(weights: Path | str | None = None, arch: Path | str | dict | None = None,
                 missing_ok=()) -> tuple[SwinIR, Path]:
    network = build_swinir(**load_arch(arch))
    path = checkpoint_path(weights)
    return load_into(network, read_state(path), missing_ok=missing_ok), path


def verify_checkpoint(name: str, path: Path, arch: Path | str | dict | None = None) -> None:
    """Load ``path``, the manifest's file ``name``, as the service does: strictly, on the
    CPU (``arch``: the network configuration, None for the released one)."""
    load_network(path, arch)


def create_stage(weights: Path | str | None = None, device: str = "auto",
                 arch: Path | str | dict | None = None, half: bool | None = None,
                 settings: Settings | None = None) -> DiffBIRStage:
    """The stage with the authors' checkpoint loaded strictly. ``device`` 'auto' lets
    $RESTORATION_DEVICE choose, else CUDA when present; fp16 autocast on CUDA by default."""
    network, path = load_network(weights, arch)
    chosen = pick_device(device)
    settings = settings or Settings(batch=default_batch(chosen))
    return DiffBIRStage(network, chosen, half=half, identity=file_identity(path),
                        settings=settings)
