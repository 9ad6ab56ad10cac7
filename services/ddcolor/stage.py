"""The colorize stage: DDColor inside the authors' inference procedure, streamed frame by
frame (upstream ``ddcolor/pipeline.py:ColorizationPipeline.process``, kept exactly):

- the frame as BGR float32 = uint8 / 255 (divided in float64); its L (OpenCV float Lab,
  0..100) at full resolution;
- the frame squashed to S x S (``cv2.resize``, bilinear, aspect not kept; S = the
  network's ``input_size``, 512 for the released models), its L with a = b = 0 converted
  back to RGB (an sRGB grey) is the network's input;
- the predicted a/b (S x S) upsampled to the frame's size nearest-neighbour (PyTorch's
  legacy 'nearest'), joined with the full-resolution L, OpenCV Lab -> BGR (clipped to
  [0, 1]), times 255, rounded to uint8.
OpenCV does the colour conversions and the resize, as upstream, so the frames match theirs.

Around it, for video:
- A clip is coloured only when it is black-and-white or tinted monochrome (as the
  orchestrator's analysis found it, in the clip header; without one, decided on its first
  frame with the shot detector's rule; shot cuts already separate grey from colour
  scenes); colour clips pass through untouched. ``scenes=all`` colours every clip.
- ``smooth=S`` (0 <= S < 1, default 0: off, the authors' output) blends each frame's a/b
  with the previous frame's along optical flow (``temporal.py``) against per-frame flicker;
  the flicker before and after is logged per clip.
- Frames go through the network in groups of ``batch`` (1 on a CPU, where batching only
  costs memory; 4 on a GPU, under float16 autocast); memory is bounded by one group.
- ``rgbf16`` frames (RGB in [0, 1]) are taken without quantisation and given back unrounded.

Clip parameters: ``scenes`` (grey|all), ``smooth`` (float), ``input_size`` (S or HxW,
multiples of 32; default the network's, as upstream's --input_size sets both).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from services.stagekit.device import pick_device, pick_dtype
from services.stagekit.monochrome import clip_is_grey
from services.stagekit.neural import (NeuralStage, config_kwargs, default_batch, file_identity,
                                      load_into, read_config, unfilled)
from services.stagekit.stage import ClipInfo, StageError
from services.stagekit.weights import WeightsError, checkpoint_file, load_checkpoint, unwrap
from services.stagekit.windowing import batches

from . import MODEL, TASK
from .network import DDColor, ENCODERS, build_ddcolor
from .temporal import ChromaSmoother

log = logging.getLogger("restoration.ddcolor")

CHECKPOINT_KEY = "params"    # BasicSR's save_network: {'params': state_dict}
# The classification head the authors deleted from the code but not from their files.
UNUSED_KEYS = ("encoder.arch.head_cls.weight", "encoder.arch.head_cls.bias")
STEM_KEY = "encoder.arch.downsample_layers.0.0.weight"
PARAMS = ("scenes", "smooth", "input_size")


# --- options -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Options:
    all_scenes: bool = False
    smooth: float = 0.0
    size: tuple[int, int] | None = None     # (H, W) the network runs at; None: its own


def parse_options(params) -> Options:
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise StageError(f"colorize/ddcolor: unknown parameter '{unknown[0]}' "
                         f"(known: {', '.join(PARAMS)})")
    scenes = params.get("scenes", "grey")
    if scenes not in ("grey", "all"):
        raise StageError(f"scenes must be 'grey' or 'all', not {scenes!r}")
    return Options(scenes == "all", parse_smooth(params.get("smooth", "0")),
                   parse_size(params["input_size"]) if "input_size" in params else None)


def parse_smooth(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise StageError(f"smooth must be a number in [0, 1), not {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise StageError(f"smooth must be in [0, 1), not {text!r}")
    return value


def parse_size(text: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 32 or parts[0] % 32 or parts[1] % 32:
        raise StageError(f"input_size must be S or HxW in multiples of 32, not {text!r}")
    return parts[0], parts[1]


# --- the authors' per-frame procedure ----------------------------------------------------

@dataclass
class Prepared:
    """One frame ready for the network, with what the authors compute on the way."""

    orig_l: np.ndarray      # (H, W) float32 L (0..100) of the frame at full resolution
    resized: np.ndarray     # (S, S', 3) float32 BGR, the frame squashed
    resized_l: np.ndarray   # (S, S') float32 its L
    net_in: np.ndarray      # (3, S, S') float32 RGB grey of that L


def to_bgr(frame: np.ndarray, pixel_format: str) -> np.ndarray:
    """(H, W, 3) float32 BGR in [0, 1]: uint8 / 255 computed in float64 as upstream."""
    if pixel_format == "rgbf16":
        image = np.clip(frame.astype(np.float32), 0.0, 1.0)
    else:
        image = (frame / 255.0).astype(np.float32)
    return np.ascontiguousarray(image[..., ::-1])


def prepare(bgr: np.ndarray, size: tuple[int, int]) -> Prepared:
    orig_l = cv2.cvtColor(bgr, cv2.COLOR_BGR2Lab)[..., 0]
    resized = cv2.resize(bgr, (size[1], size[0]))
    resized_l = cv2.cvtColor(resized, cv2.COLOR_BGR2Lab)[..., 0]
    grey_lab = np.dstack([resized_l, np.zeros_like(resized_l), np.zeros_like(resized_l)])
    grey_rgb = cv2.cvtColor(grey_lab, cv2.COLOR_LAB2RGB)
    return Prepared(orig_l, resized, resized_l, np.ascontiguousarray(grey_rgb.transpose(2, 0, 1)))


def upsample_ab(ab: torch.Tensor, height: int, width: int) -> np.ndarray:
    """(B, 2, S, S') -> (B, H, W, 2) float32, nearest (upstream's F.interpolate default)."""
    return F.interpolate(ab.float(), size=(height, width)).permute(0, 2, 3, 1).cpu().numpy()


def recombine(orig_l: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 BGR in [0, 1] from the frame's L and the predicted ab."""
    return cv2.cvtColor(np.dstack([orig_l, ab]), cv2.COLOR_LAB2BGR)


def to_frame(bgr: np.ndarray, pixel_format: str) -> np.ndarray:
    rgb = bgr[..., ::-1]
    if pixel_format == "rgbf16":
        return rgb.astype(np.float16)
    return np.ascontiguousarray((rgb * 255.0).round().astype(np.uint8))




# --- the stage ---------------------------------------------------------------------------

class DDColorStage(NeuralStage):
    task = TASK
    model = MODEL
    params = PARAMS
    window = (0, 0)
    max_batch = 8

    def __init__(self, network: DDColor, device="cpu", dtype=torch.float32,
                 identity: str = "", batch: int | None = None):
        super().__init__(network, device, dtype=dtype, identity=identity)
        self.batch = default_batch(self.device, batch)

    def validate(self, info: ClipInfo) -> None:
        super().validate(info)
        parse_options(info.params)

    def process(self, info: ClipInfo, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        options = parse_options(info.params)
        frames = iter(frames)
        first = next(frames, None)
        if first is None:
            return
        clip = chain([first], frames)
        if not options.all_scenes and not clip_is_grey(info, first):
            log.info("ddcolor clip %s: a colour scene, passed through", info.clip_id)
            yield from clip
            return
        yield from self.colorize(info, clip, options)

    def colorize(self, info: ClipInfo, frames: Iterable[np.ndarray],
                 options: Options) -> Iterator[np.ndarray]:
        size = options.size or self.working_size()
        smoother = ChromaSmoother(options.smooth) if options.smooth else None
        for group in batches(frames, self.batch):
            prepared = [prepare(to_bgr(f, info.pixel_format), size) for f in group]
            ab = self.predict(np.stack([p.net_in for p in prepared]))
            for item, ab_full in zip(prepared, upsample_ab(ab, info.height, info.width)):
                if smoother is not None:
                    ab_full = smoother(item.orig_l, ab_full)
                yield to_frame(recombine(item.orig_l, ab_full), info.pixel_format)
        if smoother is not None:
            log.info("ddcolor clip %s: chroma flicker along the motion %.3f -> %.3f (smooth=%g)",
                     info.clip_id, smoother.flicker_in.value, smoother.flicker_out.value,
                     options.smooth)

    def working_size(self) -> tuple[int, int]:
        height, width = self.network.input_size
        return int(height), int(width)

    @torch.inference_mode()
    def predict(self, net_in: np.ndarray) -> torch.Tensor:
        """(B, 3, S, S') RGB grey -> (B, 2, S, S') ab on the stage's device."""
        x = torch.from_numpy(net_in).to(self.device)
        with self.autocast():
            return self.network(x).float()


# --- building the stage ------------------------------------------------------------------

def read_arch(path: Path | None) -> dict:
    """Network kwargs in the authors' names from a JSON file (see ``arch_kwargs``)."""
    return arch_kwargs(read_config(path))


def arch_kwargs(data: dict | None) -> dict:
    """Either a plain kwargs object or a parity ``config.json``: then its network's tiny
    kwargs with the size knobs the authors hard-code."""
    return config_kwargs(data)


def checkpoint_state(checkpoint: dict) -> dict:
    """The state dict of an authors' file: under 'params' in the released .pth/.pt (BasicSR),
    bare in the Hugging Face pytorch_model.bin and in the fixtures' safetensors. The deleted
    classification head's two keys, which the released files still carry, are dropped
    (those exactly: anything else unexpected fails the strict load)."""
    state = unwrap(checkpoint, CHECKPOINT_KEY) if CHECKPOINT_KEY in checkpoint else dict(checkpoint)
    for key in UNUSED_KEYS:
        state.pop(key, None)
    return state


def released_kwargs(state: dict) -> dict:
    """The released configuration that fits ``state``: DDColor-L or DDColor-T (the files
    differ only in the encoder), told apart by the stem's width."""
    stem = state.get(STEM_KEY)
    if stem is None:
        return {}
    for name, (_, dims) in ENCODERS.items():
        if stem.shape[0] == dims[0]:
            return {"encoder_name": name}
    raise WeightsError(f"key '{STEM_KEY}' has {stem.shape[0]} channels: no released DDColor "
                       f"encoder has that width (convnext-t 96, convnext-l 192)")


def network_from_state(state: dict, **kwargs) -> DDColor:
    """Build (without initialising: every value comes from ``state``) and load strictly."""
    network = unfilled(lambda: build_ddcolor(device="meta", **(kwargs or released_kwargs(state))))
    return load_into(network, state).eval()


def load_ddcolor(path: Path, **kwargs) -> DDColor:
    return network_from_state(checkpoint_state(load_checkpoint(path)), **kwargs)


def verify_checkpoint(name: str, path: Path, arch: Path | None = None) -> None:
    """Load ``path``, the manifest's file ``name``, as the service does: strictly, on the
    CPU (``arch``: the network configuration, None for the released one)."""
    load_ddcolor(path, **read_arch(arch))


def create_stage(weights: Path | None = None, device: str = "auto",
                 arch: Path | None = None, precision: str | None = None) -> DDColorStage:
    path = checkpoint_file(MODEL, weights)
    network = load_ddcolor(path, **read_arch(arch))
    chosen = pick_device(device)
    return DDColorStage(network, chosen, pick_dtype(chosen, model=MODEL, precision=precision),
                        file_identity(path))
