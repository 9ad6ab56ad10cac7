"""The superres stage: DiffBIR (stage 1, then stage 2) inside the authors' ``inference.py
--task sr``.

What the authors do (v2.1, the default, and v1; see ``pipeline.py``), kept exactly:
- Pillow bicubic 4x of the uint8 frame; / 255, clamped; that size is the output size;
- stage 1, whole frame (their default): short edge raised to 512 (antialiased bicubic,
  long edge truncated), zero-padded to multiples of 64, SwinIR, cropped;
- tiled (their ``--cleaner_tiled``; tiles of 512, stride 256 by default): Gaussian-blended
  tiles at the upscaled size, then the short edge raised to 512; a frame smaller than a
  tile takes the whole-frame path;
- stage 2 (``stage2.py``), when its weights are there (the default then): the IRControlNet
  on Stable Diffusion 2.1 samples from noise with the stage-1 output's latent as its
  condition; the sample gets the stage-1 output's colours (wavelet fix). Without its
  weights, or with ``stage=1``, the stage-1 output stands in for the sample: the authors'
  ``Pipeline.run`` then gives exactly that, as the colour fix of x against x is x;
- antialiased bicubic back to the output size; uint8 by x * 255 clamped and truncated;
- on CUDA their ``--precision fp16`` default is ours only when asked (``half`` or
  ``--precision fp16``): fp32 otherwise, as nothing has measured its error on real weights.

What we add: frames are independent, so a clip streams through in batches of ``batch``
frames and nothing else is held; ``rgbf16`` frames are upscaled by the same bicubic in
float (no 8-bit step) and given back clamped to [0, 1], unquantised. Stage 2 draws its
noise from ``seed`` afresh for every batch, so all frames of a clip share their start and
step noise (a still scene keeps its generated texture instead of flickering).

Per clip, the header's params may set ``tiled`` (0/1), ``tile_size``, ``tile_stride``,
``batch``, and for stage 2 ``stage`` (1/2), ``sampler`` (edm_dpm++_3m_sde, spaced),
``steps``, ``cfg``, ``strength`` (the control scale), ``seed``, ``prompt``,
``negative_prompt``, ``diffusion_tiled`` (0/1), ``diffusion_tile_size``,
``diffusion_tile_stride``, ``vae_tiled`` (0/1), ``vae_encoder_tile_size`` and
``vae_decoder_tile_size`` (the authors' tiling flags, sizes in pixels).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import torch

from services.stagekit.device import pick_device
from services.stagekit.neural import (NeuralStage, default_batch, file_identity, load_into,
                                      read_config)
from services.stagekit.stage import ClipInfo, StageError
from services.stagekit.weights import (WeightsError, checkpoint_file, load_checkpoint,
                                      load_strict, unwrap, weights_path)
from services.stagekit.windowing import batches

from . import MODEL, TASK, schedule
from .checkpoints import (SD_PREFIXES, build_stage2, controlnet_state, fixture_config,
                          load_stage2, sd_part, sd_state)
from .network import SwinIR, build_swinir, load_arch
from .pipeline import (PAD_MULTIPLE, apply_cleaner, float_upscale, pillow_upscale, quantise,
                       resize_to)
from .sampler import SAMPLERS
from .stage2 import Sampling, Stage2, finish

UPSCALE = 4             # inference.py --upscale default
STAGE1_FILES = ("realesrgan_s4_swinir_100k.pth", "general_swinir_v1.ckpt")
STAGE2_FILES = {"v2.1": ("sd2.1-base-zsnr-laionaes5.ckpt", "DiffBIR_v2.1.pt"),
                "v2": ("v2-1_512-ema-pruned.ckpt", "v2.pth")}
SD_FILES = tuple(pair[0] for pair in STAGE2_FILES.values())
CONTROLNET_FILES = tuple(pair[1] for pair in STAGE2_FILES.values())
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class Settings:
    """How frames meet the networks; the defaults are the authors' (whole frames, and for
    stage 2 the v2.1 release's sampling). ``tiled``/``tile_*`` tile stage 1 (their
    ``--cleaner_tiled``), ``diffusion_tiled``/``diffusion_tile_*`` stage 2's latent (their
    ``--cldm_tiled``, sizes in pixels)."""

    tiled: bool = False
    tile_size: int = 512
    tile_stride: int = 256
    batch: int = 1
    stage: int = 0              # 0: stage 2 when the stage has its networks, else 1
    sampler: str = Sampling.sampler
    steps: int = Sampling.steps
    cfg: float = Sampling.cfg
    strength: float = Sampling.strength
    seed: int = Sampling.seed
    prompt: str = Sampling.prompt
    negative_prompt: str = Sampling.negative_prompt
    diffusion_tiled: bool = False
    diffusion_tile_size: int = Sampling.tile_size
    diffusion_tile_stride: int = Sampling.tile_stride
    vae_tiled: bool = False
    vae_encoder_tile_size: int = Sampling.vae_encoder_tile_size
    vae_decoder_tile_size: int = Sampling.vae_decoder_tile_size

    def sampling(self) -> Sampling:
        return Sampling(self.sampler, self.steps, self.cfg, self.strength, self.seed,
                        self.prompt, self.negative_prompt, self.diffusion_tiled,
                        self.diffusion_tile_size, self.diffusion_tile_stride, self.vae_tiled,
                        self.vae_encoder_tile_size, self.vae_decoder_tile_size)

    def check(self) -> "Settings":
        self.check_stage2()
        if self.tiled and (self.tile_size < PAD_MULTIPLE or self.tile_size % PAD_MULTIPLE):
            raise StageError(f"tile_size must be a multiple of {PAD_MULTIPLE}, "
                             f"not {self.tile_size}")
        if self.tiled and not 0 < self.tile_stride <= self.tile_size:
            raise StageError(f"tile_stride must be in [1, tile_size={self.tile_size}], "
                             f"not {self.tile_stride}")
        if self.batch < 1:
            raise StageError(f"batch must be at least 1, not {self.batch}")
        return self

    def check_stage2(self) -> None:
        if self.stage not in (0, 1, 2):
            raise StageError(f"stage must be 1 or 2, not {self.stage}")
        if self.sampler not in SAMPLERS:
            raise StageError(f"sampler must be one of {', '.join(SAMPLERS)}, not {self.sampler!r}")
        if not 1 <= self.steps <= schedule.TRAIN_TIMESTEPS:
            raise StageError(f"steps must be in [1, {schedule.TRAIN_TIMESTEPS}], not {self.steps}")
        for key in ("cfg", "strength"):
            value = getattr(self, key)
            if not (math.isfinite(value) and 0 <= value <= 100):
                raise StageError(f"{key} must be a number in [0, 100], not {value}")
        if not 0 <= self.seed < 2 ** 63:
            raise StageError(f"seed must be in [0, 2**63), not {self.seed}")
        size, stride = self.diffusion_tile_size, self.diffusion_tile_stride
        if self.diffusion_tiled and (size < 64 or size % 64):
            raise StageError(f"diffusion_tile_size must be a multiple of 64, not {size}")
        if self.diffusion_tiled and not (0 < stride <= size and stride % 8 == 0):
            raise StageError(f"diffusion_tile_stride must be a multiple of 8 in [8, "
                             f"diffusion_tile_size={size}], not {stride}")
        for key in ("vae_encoder_tile_size", "vae_decoder_tile_size"):
            value = getattr(self, key)
            if self.vae_tiled and (value < 64 or value % 8):
                raise StageError(f"{key} must be a multiple of 8, at least 64, not {value}")

    def with_params(self, params: Mapping[str, str]) -> "Settings":
        changes: dict = {}
        for key, value in params.items():
            kind = PARAM_TYPES.get(key)
            if kind is None:
                continue
            try:
                changes[key] = kind(value)
            except ValueError:
                raise StageError(f"{key} must be {KIND_NAMES[kind]}, not {value!r}") from None
        return replace(self, **changes).check()


def parse_flag(value: str) -> bool:
    text = str(value).strip().lower()
    if text not in TRUE + FALSE:
        raise ValueError(value)
    return text in TRUE


def parse_stage(value: str) -> int:
    if str(value).strip() not in ("1", "2"):
        raise ValueError(value)
    return int(value)


PARAM_TYPES = {"tiled": parse_flag, "tile_size": int, "tile_stride": int, "batch": int,
               "stage": parse_stage, "sampler": str, "steps": int, "cfg": float, "strength": float,
               "seed": int, "prompt": str, "negative_prompt": str,
               "diffusion_tiled": parse_flag, "diffusion_tile_size": int,
               "diffusion_tile_stride": int, "vae_tiled": parse_flag,
               "vae_encoder_tile_size": int, "vae_decoder_tile_size": int}
KIND_NAMES = {parse_flag: "0 or 1", parse_stage: "1 or 2", int: "an integer",
              float: "a number", str: "text"}


class DiffBIRStage(NeuralStage):
    task = TASK
    model = MODEL
    scale = UPSCALE
    window = (0, 0)
    max_batch = 4

    def __init__(self, network: SwinIR, device="cpu", half: bool | None = None,
                 identity: str = "", settings: Settings | None = None, stage2=None,
                 version: str = "v2.1", precision: str | None = None):
        """``stage2``: the stage-2 networks (``checkpoints.Stage2Networks``) of DiffBIR
        ``version``, or None for stage 1 alone; with them stage 2 is the default."""
        super().__init__(network, device, half=half, identity=identity, precision=precision)
        self.stage2 = None if stage2 is None else Stage2(
            on_device_all(stage2, self.device, self.dtype),
            version, self.autocast)
        settings = settings or Settings()
        stage = settings.stage or (2 if self.stage2 else 1)
        self.settings = replace(settings, stage=stage).check()
        self.backend = self.torch_backend()

    def describe(self) -> dict:
        s = self.settings
        stage2 = ({"version": self.stage2.version, "sampler": s.sampler, "steps": s.steps,
                   "cfg": s.cfg, "strength": s.strength, "seed": s.seed}
                  if self.stage2 else {})
        return {**super().describe(), "upscale": UPSCALE, "stage": s.stage, **stage2,
                "tiled": s.tiled, "tile_size": s.tile_size, "tile_stride": s.tile_stride,
                "batch": s.batch, **self.precision()}

    def validate(self, info: ClipInfo) -> None:
        super().validate(info)
        settings = self.settings.with_params(info.params)
        if settings.stage == 2 and self.stage2 is None:
            raise StageError("stage 2 needs the SD 2.1 and DiffBIR ControlNet weights "
                             "(orchestrator weights pull diffbir --optional); stage=1 runs "
                             "without them")

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
        """Upscaled frames -> the restored frames at the same size, float32, unclamped:
        stage 1, then (stage 2) the sample coloured by the stage-1 output. Every batch
        starts from the clip's seed, so all its frames share start and step noise."""
        settings = settings or self.settings
        cleaned = self.clean(x, settings)
        if settings.stage == 2:
            sample = self.stage2.sample(cleaned, settings.sampling())
            cleaned = finish(sample, cleaned)
        return resize_to(cleaned, tuple(x.shape[-2:]))

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
    """The stage-1 checkpoint: a file; inside a folder (directly or in the store's layout),
    the manifest's stage-1 files in order (v2.1 first, then v1); None is the weights store."""
    return checkpoint_file(MODEL, weights, STAGE1_FILES)


def stage2_paths(weights: Path | str | None) -> tuple[str, Path, Path] | None:
    """(version, SD checkpoint, ControlNet file) of the first release whose pair is in the
    folder ``weights`` (directly or in the store's layout) or the store (None); None when
    no pair is complete, or ``weights`` names a single (stage-1) file."""
    if weights is not None and not Path(weights).is_dir():
        return None
    root = None if weights is None else Path(weights)
    for version, names in STAGE2_FILES.items():
        found = [next((p for p in places(root, name) if p.is_file()), None) for name in names]
        if all(found):
            return (version, *found)
    return None


def places(root: Path | None, name: str) -> list[Path]:
    return ([root / name] if root is not None else []) + [weights_path(MODEL, name, root)]


def load_stage2_networks(weights: Path | str | None, arch: Path | str | dict | None):
    """(networks, version, paths) of stage 2 when its files are there, else None; ``arch``
    with a 'stage2' section (a parity config.json) gives a small configuration."""
    found = stage2_paths(weights)
    if found is None:
        return None
    version, sd, control = found
    config = read_config(arch) if arch is not None else None
    stage2 = fixture_config(config["stage2"]) if config and "stage2" in config else None
    return load_stage2(sd, control, stage2), version, (sd, control)


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
    config = read_config(arch) if arch is not None else None
    stage2 = fixture_config(config["stage2"]) if config and "stage2" in config else None
    if name in SD_FILES + CONTROLNET_FILES:
        verify_stage2_file(name, path, stage2)
    else:
        load_network(path, arch)


def verify_stage2_file(name: str, path: Path, config: dict | None) -> None:
    """One stage-2 file loaded strictly into the networks it holds: the SD checkpoint into
    the UNet, VAE and text encoder, the ControlNet file into the ControlNet."""
    checkpoint = load_checkpoint(path)
    if name in CONTROLNET_FILES:
        state = controlnet_state(checkpoint)
        load_strict(build_stage2(config, init=False).controlnet, state)
        return
    parts = {part: sd_part(sd_state(checkpoint), part) for part in SD_PREFIXES}
    empty = next((part for part, state in parts.items() if not state), None)
    if empty:   # before building 1.3 billion parameters for a file that cannot fit them
        raise WeightsError(f"the SD checkpoint has no '{SD_PREFIXES[empty]}' entries")
    nets = build_stage2(config, init=False)
    for part, network in zip(("unet", "vae", "clip"), (nets.unet, nets.vae, nets.text_encoder)):
        load_strict(network, parts[part])


def create_stage(weights: Path | str | None = None, device: str = "auto",
                 arch: Path | str | dict | None = None, half: bool | None = None,
                 settings: Settings | None = None, precision: str | None = None) -> DiffBIRStage:
    """The stage with the authors' checkpoint loaded strictly. ``device`` 'auto' lets
    $RESTORATION_DEVICE choose, else CUDA when present; half precision only when asked
    (``half``, or ``precision`` as stagekit.device rules)."""
    network, path = load_network(weights, arch)
    chosen = pick_device(device)
    settings = settings or Settings(batch=default_batch(chosen))
    stage2 = load_stage2_networks(weights, arch)
    nets, version, paths = stage2 if stage2 else (None, "v2.1", ())
    return DiffBIRStage(network, chosen, half=half,
                        identity=lambda: file_identity(path, *paths),
                        settings=settings, stage2=nets, version=version, precision=precision)


def on_device_all(nets, device: torch.device, dtype: torch.dtype = torch.float32):
    """Each stage-2 network in eval mode on ``device``; with a half ``dtype`` on CUDA the UNet
    and ControlNet weights in it (the authors' ``cast_dtype``; their GroupNorms still compute
    in float32), the VAE and text encoder kept in float32 under autocast, as they run it."""
    placed = type(nets)(*(None if n is None else n.eval().to(device) for n in nets))
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        placed.unet.to(dtype)
        placed.controlnet.to(dtype)
    return placed
