"""The ``outpaint`` stage with ProPainter: rebuild a clip's damaged borders.

Parameters (clip header ``params``, all optional):

* ``mode``: ``band`` (default) completes the damaged band in place, the frame keeps its
  size; ``outpaint`` crops the band and grows the picture back to ``width`` x ``height``
  (default: the input size), centred as the authors do.
* ``band``: ``top,bottom,left,right`` in pixels; default ``auto``: the bands the
  orchestrator's analysis found (the clip header's "bands"), or, when a caller sends none,
  found here from the clip's first frames (dead black edges, a torn head-switching band at
  the bottom).
* ``holes``: JSON list of extra hole boxes ``[x, y, w, h]`` (every frame) or
  ``[x, y, w, h, first, last]`` (frames first..last of the clip), e.g. a burned-in date.
* ``overlays``: ``remove`` (default) takes the overlays the orchestrator's analysis found
  (ClipInfo.analysis, text-shaped masks) as holes too; ``keep`` leaves them in place.
* the authors' options: ``neighbor_length``, ``ref_stride``, ``subvideo_length``,
  ``raft_iter``, ``mask_dilation`` (their defaults 10, 10, 80, 20, 4).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from itertools import chain, islice
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from services.stagekit.bands import header_bands, bands_rebuilt
from services.stagekit.device import pick_device, pick_dtype
from services.stagekit.neural import NeuralStage, config_missing_ok, load_into, read_config
from services.stagekit.overlays import overlay_mask, presence, removes_overlays, without_overlays
from services.stagekit.stage import ClipInfo, StageError
from services.stagekit.weights import sha256_file, unwrap, weights_path

from . import MODEL, TASK
from .borders import Band, detect_band, holes_mask
from .geometry import BandPlan, OutpaintPlan
from .network import ProPainterNetworks, build, kwargs_from_config
from .pipeline import Completion, Options

# The authors' three checkpoint files and how each is wrapped.
CHECKPOINTS = {
    "raft": ("raft-things.pth", "module."),   # saved from nn.DataParallel
    "flow_complete": ("recurrent_flow_completion.pth", ""),
    "propainter": ("ProPainter.pth", ""),
}
DETECT_FRAMES = 24
OPTION_NAMES = ("neighbor_length", "ref_stride", "subvideo_length", "raft_iter", "mask_dilation")


@dataclass(frozen=True)
class Request:
    """A clip's parameters, checked."""

    mode: str = "band"
    band: Band | None = None            # None: detect
    holes: tuple = ()
    target: tuple[int, int] | None = None   # (height, width) for outpainting
    options: Options = field(default_factory=Options)


def parse_request(params, defaults: Options) -> Request:
    """The clip parameters as a Request; StageError says what is wrong."""
    try:
        mode = params.get("mode", "band")
        if mode not in ("band", "outpaint"):
            raise ValueError(f"mode must be 'band' or 'outpaint', not {mode!r}")
        band_text = params.get("band", "auto")
        band = None if band_text == "auto" else Band.parse(band_text)
        holes = _parse_holes(params.get("holes", "[]"))
        target = None
        if "width" in params or "height" in params:
            if mode != "outpaint":
                raise ValueError("width/height are for mode=outpaint")
            target = (int(params["height"]), int(params["width"]))
        options = replace(defaults, **{k: int(params[k]) for k in OPTION_NAMES if k in params})
        _check_options(options)
    except (ValueError, KeyError, TypeError) as exc:
        raise StageError(f"{TASK}/{MODEL}: bad parameter: {exc}") from None
    return Request(mode, band, holes, target, options)


def _parse_holes(text: str) -> tuple:
    boxes = json.loads(text)
    if not isinstance(boxes, list):
        raise ValueError("holes must be a JSON list of boxes")
    for box in boxes:
        if (not isinstance(box, list) or len(box) not in (4, 6)
                or not all(isinstance(v, int) for v in box) or box[2] <= 0 or box[3] <= 0):
            raise ValueError(f"hole {box!r} is not [x, y, w, h] or [x, y, w, h, first, last]")
    return tuple(tuple(box) for box in boxes)


def _check_options(options: Options) -> None:
    if options.neighbor_length < 2:
        raise ValueError("neighbor_length must be at least 2")
    if min(options.ref_stride, options.subvideo_length, options.raft_iter) < 1:
        raise ValueError("ref_stride, subvideo_length and raft_iter must be positive")
    if options.mask_dilation < 0:
        raise ValueError("mask_dilation must not be negative")


def given_band(info: ClipInfo, request: Request) -> Band | None:
    """The band the user forced, else the one the orchestrator's analysis found (the clip
    header's); None when there is neither: the stage finds it from the clip's frames."""
    if request.band is not None:
        return request.band
    found = header_bands(info, f"{TASK}/{MODEL}")
    if found is None:
        return None
    return Band(top=found.top, bottom=found.bottom, left=found.left, right=found.right)


class ProPainterStage(NeuralStage):
    task = TASK
    model = MODEL
    accepts = ("rgb24",)
    backend = "torch"
    max_batch = 8
    # RAFT stays in fp32 as the authors run it; the rest follows the stage's precision.
    cast = ("flow_complete", "propainter")

    def __init__(self, nets: ProPainterNetworks, device, dtype=torch.float32,
                 identity: str = "", options: Options = Options()):
        super().__init__(nets, device, dtype=dtype, identity=identity)
        self.options = options
        # A frame may draw on up to subvideo_length frames either side (short clips are
        # taken whole; longer ones through chunks and references of that reach).
        self.window = (options.subvideo_length, options.subvideo_length)

    def validate(self, info: ClipInfo) -> None:
        super().validate(info)
        request = parse_request(info.params, self.options)
        if request.target is not None and min(request.target) <= 0:
            raise StageError(f"{TASK}/{MODEL}: target size must be positive")
        band = given_band(info, request)
        if band is not None:
            self._plan(info, request, band)

    def output_info(self, info: ClipInfo) -> ClipInfo:
        request = parse_request(info.params, self.options)
        info = bands_rebuilt(info)   # rebuilt here
        if removes_overlays(info, f"{TASK}/{MODEL}"):
            info = without_overlays(info)
        if request.mode == "outpaint" and request.target is not None:
            return info.replace(height=request.target[0], width=request.target[1])
        return info

    def protects_overlays(self, info: ClipInfo) -> bool:
        return not removes_overlays(info, f"{TASK}/{MODEL}")

    def _plan(self, info: ClipInfo, request: Request, band: Band):
        if request.mode == "band":
            return BandPlan(info.height, info.width, request.options.mask_dilation)
        target = request.target or (info.height, info.width)
        try:
            return OutpaintPlan(info.height, info.width, band, target,
                                request.options.mask_dilation)
        except ValueError as exc:
            raise StageError(f"{TASK}/{MODEL}: {exc}") from None

    def process(self, info: ClipInfo, frames) -> Iterator[np.ndarray]:
        request = parse_request(info.params, self.options)
        frames = iter(frames)
        band = given_band(info, request)
        head = list(islice(frames, DETECT_FRAMES)) if band is None else []
        band = band if band is not None else detect_band(head)
        plan = self._plan(info, request, band)
        frames = chain(head, frames)
        del head
        overlay = overlay_mask(info) if removes_overlays(info, f"{TASK}/{MODEL}") else None
        overlay = overlay > 0 if overlay is not None and overlay.any() else None
        if not band and not request.holes and overlay is None \
                and plan.output_size == (info.height, info.width):
            yield from frames     # nothing damaged, nothing to grow: the input is the answer
            return
        engine = Completion(self.network, request.options, self.device, self.dtype)
        for composited in engine.run(self._clip_frames(info, request, band, plan, frames,
                                                       overlay)):
            yield np.ascontiguousarray(plan.crop(composited))

    @staticmethod
    def _clip_frames(info, request, band, plan, frames, overlay=None):
        band_hole = band.mask(info.height, info.width) if request.mode == "band" else None
        shown = presence(info)
        for index, frame in enumerate(frames):
            hole = holes_mask(request.holes, index, info.height, info.width)
            if band_hole is not None:
                hole |= band_hole
            if overlay is not None and shown(index / float(info.fps)):
                hole |= overlay
            yield plan.clip_frame(frame, hole)


# --------------------------------------------------------------------------------------
# Building the stage: the networks, the authors' checkpoints, the device
# --------------------------------------------------------------------------------------

def load_official(nets: ProPainterNetworks, folder: Path | None) -> str:
    """Load the authors' three files (from ``folder`` or the weights store) strictly, as
    they ship them; returns the weights' identity (their sha256s)."""
    parts = []
    for name, (file_name, _) in CHECKPOINTS.items():
        path = folder / file_name if folder is not None else weights_path(MODEL, file_name)
        load_part(nets, name, path)
        parts.append(f"{file_name}:sha256:{sha256_file(path)[:16]}")
    return " ".join(parts)


def load_part(nets: ProPainterNetworks, name: str, path: Path) -> None:
    """Load the authors' file of the network ``name`` (a key of CHECKPOINTS) strictly."""
    prefix = CHECKPOINTS[name][1]
    load_into(getattr(nets, name), path, lambda checkpoint: unwrap(checkpoint, None, prefix))


def load_combined(nets: ProPainterNetworks, path: Path, missing_ok=()) -> str:
    """Load one file holding all three networks under ``raft.``, ``flow_complete.`` and
    ``propainter.`` (the parity fixtures' layout)."""
    load_into(nets, path, missing_ok=missing_ok)
    return f"{path.name}:sha256:{sha256_file(path)[:16]}"


def load_arch(arch: Path | None) -> tuple[dict | None, tuple]:
    config = read_config(arch)
    return config, tuple(config_missing_ok(config))


def verify_checkpoint(name: str, path: Path, arch: Path | None = None) -> None:
    """Load ``path``, the manifest's file ``name``, as the service does: strictly, on the
    CPU (``arch``: the network configuration, None for the released one)."""
    config, _ = load_arch(arch)
    nets = build(kwargs_from_config(config) if config is not None else None)
    load_part(nets, next(net for net, (file, _) in CHECKPOINTS.items() if file == name), path)


def create_stage(weights: Path | None = None, device: str = "auto",
                 arch: Path | None = None, precision: str | None = None) -> ProPainterStage:
    """The stage on ``device``; ``weights``: a folder with the authors' three files, one
    combined file, or None for the weights store; ``arch``: a JSON configuration (a
    parity config.json) or None for the released networks."""
    config, missing_ok = load_arch(arch)
    nets = build(kwargs_from_config(config) if config is not None else None)
    weights = Path(weights) if weights is not None else None
    if weights is not None and weights.is_file():
        identity = load_combined(nets, weights, missing_ok)
    else:
        identity = load_official(nets, weights)
    target = pick_device(device)
    return ProPainterStage(nets, target, pick_dtype(target, model=MODEL, precision=precision),
                           identity)
