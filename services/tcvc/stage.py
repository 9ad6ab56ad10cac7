"""The colorize stage around TCVC's networks: the authors' inference procedure, streamed.

Per black-and-white shot (a clip): stage 1 colours the first frame (or the user gives a
reference image), then stage 2 propagates the reference through the shot in clips of
[reference + 3 frames], carrying a memory from clip to clip, so a clip of any length needs
only 3 frames and the memory at a time. As the authors do: skimage Lab (D65), L-50 into the
networks, ab raw, the networks at 216x384, the predicted ab upsampled and joined with the
full-resolution L. Unlike their script, the whole frame is kept (no centre crop) unless the
compatibility switch ``compat=authors`` asks for their 480x848 crop; as theirs does, the
networks see the picture in its own proportions: the default working size has the frame's
display aspect (its SAR included) at about the authors' 216x384 pixel count, so 4:3
footage is not stretched to 16:9.

Clip parameters (``ClipInfo.params``):
  scenes       ``grey`` (default): colour a clip only if it is black-and-white (as the
               orchestrator's analysis found it, in the clip header; without one, if its
               first frame is grey or tinted monochrome), pass colour clips through;
               ``all``: colour every clip.
  reference    path (on the service's file system) of a colour reference image for the shot;
               default: the first of the references in the clip header (the tape's own
               colour frame nearest the shot, chosen by the orchestrator), else stage 1's
               colourisation of the shot's first frame.
  working_size ``HxW`` the networks run at (multiples of 8), default: the frame's display
               aspect at about 216x384's pixel count (216x384 itself for 16:9 frames).
  compat       ``authors``: the authors' centre crop to ``video_size`` (default 480x848);
               output frames are then that size, as theirs are. rgb24 only.
  output       ``video`` (default), or ``reference``: the one reference frame the shot is
               coloured from (stage 1's output), for checking or for reuse.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from services.stagekit.codec import decode_reference
from services.stagekit.device import pick_device, pick_dtype
from services.stagekit.monochrome import clip_is_grey
from services.stagekit.neural import (NeuralStage, config_missing_ok, load_into, on_device,
                                      read_config, unfilled)
from services.stagekit.stage import ClipInfo, StageError
from services.stagekit.weights import WeightsError, manifest, sha256_file, unwrap, weights_path
from services.stagekit.windowing import batches

from . import MODEL, TASK
from .colour import (backbone_lab2rgb, center_pad, lab2rgb, rgb2lab, to_pixels, unit_rgb)
from .network import TCVCNetworks, build_networks, kwargs_from_config

WORKING_SIZE = (216, 384)
AUTHORS_VIDEO_SIZE = (480, 848)
CLIP_FRAMES = 4             # the reference + 3 frames, as the released model was run
TEMPERATURE_WARP = 1e-10
COLOUR_PRIOR = 0.5          # stage 1's abandoned colour prior, fixed by the authors

COLORNET_FILE = "colornet_iter_340000.pth"
ENCODER_FILE = "checkpoint_encoder_finetune02010000.pth"
DECODER_FILE = "checkpoint_decoder_finetune02010000.pth"


# --------------------------------------------------------------------------- options

@dataclass(frozen=True)
class Options:
    working: tuple[int, int] | None = WORKING_SIZE   # None: from the frame's aspect
    crop: tuple[int, int] | None = None     # the authors' CenterPad size (compat=authors)
    all_scenes: bool = False
    reference: Path | None = None
    output: str = "video"


def _size(text: str, name: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise StageError(f"{name} must be HxW, e.g. 216x384, not {text!r}") from None
    if h <= 0 or w <= 0:
        raise StageError(f"{name} must be positive, not {text!r}")
    return h, w


def parse_options(params) -> Options:
    known = {"scenes", "reference", "working_size", "compat", "video_size", "output"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise StageError(f"colorize/tcvc has no parameter {unknown[0]!r} (has: {', '.join(sorted(known))})")
    scenes = params.get("scenes", "grey")
    if scenes not in ("grey", "all"):
        raise StageError(f"scenes must be 'grey' or 'all', not {scenes!r}")
    working = _size(params["working_size"], "working_size") if params.get("working_size") else None
    if working is not None and (working[0] % 8 or working[1] % 8 or min(working) < 16):
        raise StageError(f"working_size must be multiples of 8, at least 16: {working}")
    compat = params.get("compat", "")
    if compat not in ("", "authors"):
        raise StageError(f"compat must be 'authors' or empty, not {compat!r}")
    crop = _size(params.get("video_size", "480x848"), "video_size") if compat else None
    output = params.get("output", "video")
    if output not in ("video", "reference"):
        raise StageError(f"output must be 'video' or 'reference', not {output!r}")
    reference = Path(params["reference"]) if params.get("reference") else None
    if reference is not None and not reference.is_file():
        raise StageError(f"reference image not found: {reference}")
    return Options(working, crop, scenes == "all" or bool(compat), reference, output)


def aspect_working_size(width: int, height: int, sar=1) -> tuple[int, int]:
    """(h, w) in multiples of 8 with the display aspect of a ``width``x``height`` frame
    of sample aspect ``sar`` and about as many pixels as the authors' 216x384: what the
    networks see is the picture in its proportions, as after the authors' CenterPad."""
    aspect = width * float(sar) / height
    pixels = WORKING_SIZE[0] * WORKING_SIZE[1]
    h = max(16, 8 * round((pixels / aspect) ** 0.5 / 8))
    return h, max(16, 8 * round(h * aspect / 8))


def resolved(opts: Options, info: ClipInfo) -> Options:
    """``opts`` with the working size the clip's frames give when none was asked for (the
    authors' crop, under compat=authors, is what the networks then see)."""
    if opts.working is not None:
        return opts
    height, width = opts.crop or (info.height, info.width)
    sar = 1 if opts.crop else info.sar
    return dataclasses.replace(opts, working=aspect_working_size(width, height, sar))


# --------------------------------------------------------------------------- per frame

@dataclass
class Prepared:
    l_full: torch.Tensor     # (1, H, W) float32 L-50 at the output resolution
    lab_small: torch.Tensor  # (3, h, w) float32 (L-50, a, b) at the working size


@dataclass
class Coloured:
    l_full: torch.Tensor     # (1, H, W) L-50
    ab_full: torch.Tensor    # (2, H, W) raw ab
    frame: np.ndarray        # (H, W, 3) in the clip's pixel format


@dataclass
class Reference:
    net_in_lab: torch.Tensor  # (1, 3, h, w) what stage 1 sees
    net_ab: torch.Tensor      # (1, 2, h, w) its prediction
    coloured: Coloured



def read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)  # grey files come back as 3 channels
    if image is None:
        raise StageError(f"cannot read the reference image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _resize(t: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)


class Colorizer:
    """TCVC's networks on one device, with the authors' pre- and post-processing."""

    def __init__(self, nets: TCVCNetworks, device="cpu", dtype=torch.float32):
        self.device, self.dtype = torch.device(device), dtype
        # The warp's hard argmax separates cosines ~1e-4 apart: it always runs in float32.
        self.nets = on_device(nets, self.device, dtype, float32_parts=["decoder.warper.warp_layer"])

    def prepare(self, frame: np.ndarray, opts: Options) -> Prepared:
        if opts.crop is not None:
            frame = center_pad(frame, opts.crop)
        lab = rgb2lab(unit_rgb(frame, self.device)).float().permute(2, 0, 1)
        lab = torch.cat((lab[:1] - 50.0, lab[1:]))
        return Prepared(lab[:1], _resize(lab[None], opts.working)[0])

    def finish(self, l_full: torch.Tensor, ab_small: torch.Tensor, pixel_dtype) -> Coloured:
        ab_full = _resize(ab_small[None].float(), l_full.shape[-2:])[0]
        lab = torch.cat((l_full + 50.0, ab_full)).double().permute(1, 2, 0)
        return Coloured(l_full, ab_full, to_pixels(lab2rgb(lab), pixel_dtype))

    @torch.inference_mode()
    def reference(self, frame: np.ndarray, opts: Options, pixel_dtype=np.uint8) -> Reference:
        """Stage 1: the first frame coloured with no exemplar."""
        p = self.prepare(frame, opts)
        h, w = opts.working
        x = torch.cat((torch.full((4, h, w), COLOUR_PRIOR, device=self.device),
                       torch.zeros((3, h, w), device=self.device), p.lab_small[:1]))[None]
        ab = self.nets.colornet(x.to(self.dtype)).float()
        return Reference(p.lab_small[None], ab, self.finish(p.l_full, ab[0], pixel_dtype))

    def propagate(self, frames, reference: np.ndarray, opts: Options,
                  pixel_dtype=np.uint8) -> Iterator[Coloured]:
        """Stage 2: colour ``frames`` (a shot, streamed) from the reference image."""
        shot = Shot(self, self.prepare(reference, opts).lab_small)
        for group in batches(frames, CLIP_FRAMES - 1):
            prepared = [self.prepare(f, opts) for f in group]
            ab = shot.step(torch.stack([p.lab_small[:1] for p in prepared]))
            for p, ab_small in zip(prepared, ab):
                yield self.finish(p.l_full, ab_small, pixel_dtype)


class Shot:
    """Stage 2's state within one shot: the reference and the memory across clips."""

    def __init__(self, colorizer: Colorizer, ref_lab: torch.Tensor):
        self.nets, self.dtype = colorizer.nets, colorizer.dtype
        self.ref_lab = ref_lab[None]                            # (1, 3, h, w)
        # The backbone runs on the whole clip, reference included, every time, as the
        # authors run it: caching the reference's features changes the batch the convs
        # see, and that rounding noise alone moves the tiny parity network's output 1e-3.
        self.ref_rgb = backbone_lab2rgb(torch.cat((self.ref_lab[:, :1] + 50.0, self.ref_lab[:, 1:]), 1))
        self.memory = None

    @torch.inference_mode()
    def step(self, l_grey: torch.Tensor) -> torch.Tensor:
        """One clip: (k, 1, h, w) L-50 of up to 3 frames -> their (k, 2, h, w) ab."""
        nets = self.nets
        grey_rgb = ((l_grey + 50.0) / 100.0).expand(-1, 3, -1, -1)
        rgb = torch.cat((self.ref_rgb, grey_rgb)).to(self.dtype)
        hs, out_trans, features, pos = nets.model(rgb, self.memory)
        l_all = torch.cat((self.ref_lab[:, :1], l_grey))[None].to(self.dtype)
        ref_ab = self.ref_lab[:, 1:][None].to(self.dtype)
        ab = nets.decoder(hs, out_trans, ref_ab, features, l_all, pos, TEMPERATURE_WARP)[0]
        self.memory = out_trans if self.memory is None else nets.inter_save(self.memory, out_trans)
        return ab[0, 1:].float()


# --------------------------------------------------------------------------- the stage

class TCVCStage(NeuralStage):
    task = TASK
    model = MODEL
    window = (0, CLIP_FRAMES - 2)   # a frame waits for the rest of its clip of 3
    max_batch = CLIP_FRAMES - 1

    def __init__(self, colorizer: Colorizer, weight_files: list[Path]):
        super().__init__(colorizer.nets, colorizer.device, dtype=colorizer.dtype,
                         identity=lambda: files_identity(weight_files))
        self.colorizer = colorizer
        self.weight_files = weight_files

    def validate(self, info: ClipInfo) -> None:
        super().validate(info)
        opts = parse_options(info.params)
        if opts.crop is not None and info.pixel_format != "rgb24":
            raise StageError("compat=authors reproduces the authors' 8-bit pipeline: send rgb24")

    def output_info(self, info: ClipInfo) -> ClipInfo:
        opts = parse_options(info.params)
        height, width = opts.crop or (info.height, info.width)
        count = 1 if opts.output == "reference" else info.frame_count
        return info.replace(width=width, height=height, frame_count=count)

    def process(self, info: ClipInfo, frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        opts = resolved(parse_options(info.params), info)
        frames = iter(frames)
        first = next(frames, None)
        if first is None:
            return
        frames = chain([first], frames)
        if opts.output == "reference":
            yield self.colorizer.reference(first, opts, info.dtype).coloured.frame
            for _ in frames:  # the rest of the clip is read and dropped: the stream must end
                pass
            return
        if not opts.all_scenes and not clip_is_grey(info, first):
            yield from frames
            return
        reference = self._reference(first, opts, info)
        for coloured in self.colorizer.propagate(frames, reference, opts, info.dtype):
            yield coloured.frame

    def _reference(self, first: np.ndarray, opts: Options, info: ClipInfo) -> np.ndarray:
        if opts.reference is not None:
            return read_image(opts.reference)
        if info.references:
            return decode_reference(info.references[0])
        return self.colorizer.reference(first, opts, info.dtype).coloured.frame


# --------------------------------------------------------------------------- construction

def read_arch(arch: Path | None) -> tuple[dict, tuple]:
    """Per-network kwargs and the keys allowed to be absent: a parity config.json, or
    {"colornet": {...}, "model": {...}, ...}; None is the official configuration."""
    config = read_config(arch)
    if config is None:
        return {}, ()
    if "networks" in config:
        return kwargs_from_config(config), tuple(config_missing_ok(config))
    return config, ()


def official_files(folder: Path) -> list[Path]:
    return [folder / COLORNET_FILE, folder / ENCODER_FILE, folder / DECODER_FILE]


def load_weights(nets: TCVCNetworks, weights: Path | None, missing_ok=()) -> list[Path]:
    """Load the authors' three checkpoints from a folder (default: the weights store), or
    one safetensors file holding all four networks under their prefixes (the parity
    fixtures' layout). Strict: any missing, extra or misshaped key is a WeightsError."""
    path = Path(weights) if weights is not None else weights_path(MODEL, COLORNET_FILE).parent
    if path.is_file():
        if path.suffix != ".safetensors":
            raise WeightsError(f"{path}: give the folder holding {COLORNET_FILE}, {ENCODER_FILE} "
                               f"and {DECODER_FILE}, or one prefixed .safetensors file")
        load_into(nets, path, missing_ok=missing_ok)
        return [path]
    files = official_files(path)
    for file in files:
        if not file.is_file():
            raise WeightsError(f"weights file not found: {file} (run: orchestrator weights pull tcvc)")
    for file in files:
        load_file(nets, file.name, file)
    return files


# Each authors' file: the networks it holds, each with the entry it is under (None: bare).
FILE_PARTS = {
    COLORNET_FILE: (("colornet", None),),
    ENCODER_FILE: (("model", "model"), ("inter_save", "inter_save")),
    DECODER_FILE: (("decoder", "model"),),
}


def load_file(nets: TCVCNetworks, name: str, path: Path) -> None:
    """Load the authors' file ``name`` (from ``path``) into the networks it holds."""
    for attribute, key in FILE_PARTS[name]:
        _load(getattr(nets, attribute), path, key)


def verify_checkpoint(name: str, path: Path, arch: Path | None = None) -> None:
    """Load ``path``, the manifest's file ``name``, as the service does: strictly, on the
    CPU (``arch``: the network configuration, None for the released one)."""
    kwargs, missing_ok = read_arch(arch)
    load_file(build_unloaded(kwargs, missing_ok), name, path)


def files_identity(files: list[Path]) -> str:
    """'NAME:HEX' (16 digits of the sha256; the manifest's where it has one) of each file."""
    known = {f.name: f.sha256 for f in manifest(MODEL)}
    return ",".join(f"{p.name}:{(known.get(p.name) or sha256_file(p))[:16]}" for p in files)


def _load(module, path: Path, key: str | None) -> None:
    # The authors' stage-2 files may carry their argparse Namespace beside the weights.
    torch.serialization.add_safe_globals([argparse.Namespace])
    try:
        load_into(module, path, lambda checkpoint: unwrap(checkpoint, key))
    except WeightsError as exc:
        raise WeightsError(f"{path.name}{f'[{key!r}]' if key else ''}: {exc}") from exc


def build_loaded(weights: Path | None = None, arch: Path | None = None) -> tuple[TCVCNetworks, list[Path]]:
    kwargs, missing_ok = read_arch(arch)
    nets = build_unloaded(kwargs, missing_ok)
    return nets, load_weights(nets, weights, missing_ok)


def build_unloaded(kwargs: dict, missing_ok=()) -> TCVCNetworks:
    # Unless some may be absent, every tensor is about to be overwritten: skip the (slow)
    # random initialisation.
    return build_networks(**kwargs) if missing_ok else unfilled(lambda: build_networks(**kwargs))


def create_stage(weights: Path | None = None, device: str = "auto", arch: Path | None = None,
                 precision: str | None = None) -> TCVCStage:
    nets, files = build_loaded(weights, arch)
    torch_device = pick_device(device)
    dtype = pick_dtype(torch_device, model=MODEL, precision=precision)
    return TCVCStage(Colorizer(nets, torch_device, dtype), files)
