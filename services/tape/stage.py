"""The analog stage around the two networks: the authors' inference procedure, streamed.

What the authors' scripts do, kept: each output frame comes from a window of five frames
centred on it (stride 1, black frames beyond the clip's ends); RGB in [0, 1]; frame sizes
padded with zeros to multiples of 16 (TAPE also to at least 64) and the output cut back;
the output is input + residual, clamped, then truncated (not rounded) to uint8. TAPE
takes the five references its CLIP selection gives the centre frame. On CUDA the networks
run under float16 autocast, as the authors' do.

What differs, on purpose, and the parameters that bring the authors' behaviour back:
- No pixel is cropped away by default. ``patch_size=P`` applies the authors' crop (TAPE: a
  centred crop of at most P on each axis; Swin-UNet: a square P x P centre crop).
- ``compat=upstream`` reproduces the released scripts' slips: TAPE's references become
  frame numbers equal to the rank positions in the clean list (so always among the first
  frames of the clip); the Swin-UNet gives the last two frames four-frame windows, pads
  (size mod 16) // 2 on every side and keeps rows/columns [pad, size - pad) of the padded
  output, which shifts the picture and loses 2 * pad rows and columns.
- ``references=[[...], ...]`` (TAPE) gives each frame's reference indices, as the
  authors' references.json does, instead of running the CLIP selection.
- References come from the whole input, as the authors pick them from the whole video:
  the frames of the input the clip header carries (``ClipInfo.references``, the
  orchestrator's picks over the input) are scored with the clip's own and join the
  candidates; ``reference_scope=shot`` keeps to the clip's frames.
- Frames are used as decoded; the scripts' JPEG round trip of every frame is left out.
- A clip where no frame scores below Otsu's threshold (e.g. a single frame) takes its
  references from all its frames; the authors' script fails there.

TAPE's references may be any frame of the clip, so its stage reads the clip twice: the
first pass spools the frames to a temporary file while CLIP scores them; the second
restores from the spool. Memory stays at a few windows however long the clip is.
"""
from __future__ import annotations

import abc
import itertools
import json
import os
import tempfile
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from services.stagekit.codec import decode_reference
from services.stagekit.device import pick_device, precision_name
from services.stagekit.neural import (NeuralStage, config_missing_ok, default_batch,
                                      keys_matching, load_into, read_config, tiny_kwargs)
from services.stagekit.stage import ClipInfo, Stage, StageError
from services.stagekit.weights import (WeightsError, load_checkpoint, refuse_unverified,
                                       sha256_file, unwrap, weights_dir)

from . import MODEL, SWINUNET, TASK
from .network import build_swinunet, build_tape
from .references import ClipScorer, selection

# Files in the weights store (services/tape/weights.json names the same ones).
CHECKPOINTS = {MODEL: "checkpoint.pth", SWINUNET: "video_swin_unet.ckpt"}
CLIP_FILE = "RN50x4.pt"
# The parity fixtures name the Swin-UNet after its paper (ACM MM 2022).
FIXTURE_NAMES = {"tape": MODEL, "mm22": SWINUNET}
RADIUS = 2              # five-frame windows, T // 2 on each side
REFERENCES = 5          # D
MULTIPLE = 16           # four 2x downsamplings
TAPE_MIN_SIDE = 64      # MRSFF's 8x8 windows at 1/8 scale


# ----------------------------------------------------------------------------- geometry

@dataclass(frozen=True)
class Geometry:
    """Where a frame is cut, how it is padded and which part of the output is kept."""

    crop: tuple[int, int, int, int]         # top, left, height, width of the input used
    pad: tuple[int, int, int, int]          # top, bottom, left, right zeros
    keep: tuple[int, int, int, int]         # top, left, height, width on the padded output

    @property
    def out_size(self) -> tuple[int, int]:
        return self.keep[2], self.keep[3]

    def prepare(self, frame: torch.Tensor) -> torch.Tensor:
        """(3, H, W) float -> the padded network input."""
        top, left, h, w = self.crop
        pt, pb, pl, pr = self.pad
        return F.pad(frame[:, top:top + h, left:left + w], (pl, pr, pt, pb))

    def finish(self, raw: torch.Tensor) -> torch.Tensor:
        top, left, h, w = self.keep
        return raw[..., top:top + h, left:left + w]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def tape_geometry(height: int, width: int, patch: int | None) -> Geometry:
    """TAPE: an optional centred crop of at most ``patch`` per axis, zeros right and bottom
    to multiples of 16 (and at least 64), the cropped size back."""
    top, left, h, w = 0, 0, height, width
    if patch and (height > patch or width > patch):
        top, left = max((height - patch) // 2, 0), max((width - patch) // 2, 0)
        h, w = min(height, patch), min(width, patch)
    ph = max(_round_up(h, MULTIPLE), TAPE_MIN_SIDE) - h
    pw = max(_round_up(w, MULTIPLE), TAPE_MIN_SIDE) - w
    return Geometry((top, left, h, w), (0, ph, 0, pw), (0, 0, h, w))


def swinunet_geometry(height: int, width: int, patch: int | None, upstream: bool) -> Geometry:
    """Swin-UNet: an optional square centre crop, zeros on both sides of each axis."""
    top, left, h, w = 0, 0, height, width
    if patch:
        if height < patch or width < patch:
            raise StageError(f"patch_size {patch} is larger than the {width}x{height} frames")
        top, left, h, w = int((height - patch) / 2), int((width - patch) / 2), patch, patch
    if upstream:
        return _swinunet_upstream(top, left, h, w)
    ph, pw = _round_up(h, MULTIPLE) - h, _round_up(w, MULTIPLE) - w
    pad = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
    return Geometry((top, left, h, w), pad, (pad[0], pad[2], h, w))


def _swinunet_upstream(top: int, left: int, h: int, w: int) -> Geometry:
    ph, pw = (h % MULTIPLE) // 2, (w % MULTIPLE) // 2
    if (h + 2 * ph) % MULTIPLE or (w + 2 * pw) % MULTIPLE:
        raise StageError(f"compat=upstream pads {h}x{w} by (size mod 16) // 2 per side, which "
                         f"gives no multiple of 16 here; use a size whose remainder is 0 or 8")
    return Geometry((top, left, h, w), (ph, ph, pw, pw), (ph, pw, h - 2 * ph, w - 2 * pw))


# ----------------------------------------------------------------------------- windows

def centred_windows(frames: Iterable, radius: int = RADIUS, short_end: bool = False):
    """For each frame of a stream, (index, window): the 2 * radius + 1 frames centred on it,
    ``None`` standing for a black frame beyond the clip's ends. Holds 2 * radius + 1 frames.

    ``short_end`` is the Swin-UNet script's count at the end, one black frame short: its
    last two frames get four-frame windows (their centre still at position ``radius``)."""
    recent: deque = deque(maxlen=2 * radius + 1)
    count = 0
    for frame in frames:
        recent.append(frame)
        count += 1
        if count > radius:
            yield count - 1 - radius, _window(recent, count, count - 1 - radius, radius, None)
    for centre in range(max(0, count - radius), count):
        yield centre, _window(recent, count, centre, radius, count if short_end else count - 1)


def _window(recent: deque, seen: int, centre: int, radius: int, last: int | None) -> list:
    first_held = seen - len(recent)
    left = [None] * max(0, radius - centre)
    body = [recent[i - first_held] for i in range(max(0, centre - radius), min(seen, centre + radius + 1))]
    right = [] if last is None else [None] * max(0, radius - (last - centre))
    return left + body + right


# ----------------------------------------------------------------------------- spool

class FrameSpool:
    """A clip's frames in a temporary file, so a second pass can read any of them back."""

    def __init__(self):
        self.file = tempfile.TemporaryFile(prefix="tape-spool-")
        self.shape: tuple | None = None
        self.dtype = None
        self.count = 0

    def append(self, frame: np.ndarray) -> None:
        if self.shape is None:
            self.shape, self.dtype = frame.shape, frame.dtype
        self.file.write(np.ascontiguousarray(frame).tobytes())
        self.count += 1

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> np.ndarray:
        size = int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize
        data = os.pread(self.file.fileno(), size, index * size)
        return np.frombuffer(data, dtype=self.dtype).reshape(self.shape)

    def __iter__(self) -> Iterator[np.ndarray]:
        self.file.flush()
        return (self[i] for i in range(self.count))

    def close(self) -> None:
        self.file.close()


# ----------------------------------------------------------------------------- stages

def _int_param(params, name: str) -> int | None:
    value = params.get(name, "")
    if value in ("", "0", "none"):
        return None
    try:
        number = int(value)
    except ValueError:
        raise StageError(f"{name} must be an integer, not {value!r}") from None
    if number < 0:
        raise StageError(f"{name} must be positive, not {number}")
    return number


def _upstream(params) -> bool:
    value = params.get("compat", "")
    if value not in ("", "upstream"):
        raise StageError(f"compat must be 'upstream' or empty, not {value!r}")
    return value == "upstream"


class AnalogStage(NeuralStage):
    """What both networks share: parameters, device, frame conversion, batching."""

    task = TASK
    window = (RADIUS, RADIUS)
    max_batch = 8

    def __init__(self, network: torch.nn.Module, device="cpu", half: bool | None = None,
                 weights: Path | None = None, batch: int | None = None,
                 window_frames: int = 2 * RADIUS + 1, precision: str | None = None):
        if window_frames < 1 or window_frames % 2 == 0:
            raise ValueError(f"window_frames must be odd, not {window_frames}")
        self.radius = window_frames // 2
        self.window = (self.radius, self.radius)
        super().__init__(network, device, half=half, precision=precision,
                         identity=lambda: f"sha256:{sha256_file(weights)}" if weights else "")
        self.batch = default_batch(self.device, batch)
        self.backend = self.torch_backend(precision_name(self.dtype) if self.half else "")

    @abc.abstractmethod
    def geometry(self, info: ClipInfo) -> Geometry:
        """Crop, padding and kept region for this clip and its parameters."""

    @abc.abstractmethod
    def restore(self, info: ClipInfo, frames: Iterator[np.ndarray]) -> Iterator[torch.Tensor]:
        """The network's raw output (3, H, W) for each frame: on the padded canvas,
        unclamped, in the stage's dtype."""

    def process(self, info: ClipInfo, frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        geometry = self.geometry(info)
        for raw in self.restore(info, frames):
            yield self.to_output(raw, geometry, info.pixel_format)

    def validate(self, info: ClipInfo) -> None:
        super().validate(info)
        self.geometry(info)

    def output_info(self, info: ClipInfo) -> ClipInfo:
        h, w = self.geometry(info).out_size
        return info.replace(width=w, height=h)

    def to_input(self, frame: np.ndarray, geometry: Geometry) -> torch.Tensor:
        """An RGB frame as the network's padded float32 (3, H, W) input."""
        tensor = torch.from_numpy(np.array(frame, copy=True)).to(self.device).permute(2, 0, 1)
        tensor = tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor.float()
        return geometry.prepare(tensor)

    def to_output(self, raw: torch.Tensor, geometry: Geometry, pixel_format: str) -> np.ndarray:
        """Clamp, cut back, and for rgb24 truncate to uint8 like the authors' astype."""
        frame = geometry.finish(raw.float().clamp(0, 1)).permute(1, 2, 0)
        if pixel_format == "rgb24":
            return (frame * 255).to(torch.uint8).cpu().numpy()
        return frame.half().cpu().numpy()

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The centre frame of each window of the batch. Kept out of the generators so
        inference mode and autocast never stay switched on across a yield."""
        with torch.inference_mode(), self.autocast():
            return self.network(*inputs)[:, self.radius]


def _window_batches(indexed_windows: Iterable, size: int):
    """Consecutive runs of at most ``size`` windows of equal length."""
    run: list = []
    for centre, window in indexed_windows:
        if run and (len(run) == size or len(run[-1][1]) != len(window)):
            yield run
            run = []
        run.append((centre, window))
    if run:
        yield run


class SwinUNetStage(AnalogStage):
    """The ACM MM 2022 Swin-UNet: five frames in, the centre one out."""

    model = SWINUNET

    def geometry(self, info: ClipInfo) -> Geometry:
        params = info.params
        return swinunet_geometry(info.height, info.width, _int_param(params, "patch_size"),
                                 _upstream(params))

    def restore(self, info: ClipInfo, frames: Iterator[np.ndarray]) -> Iterator[torch.Tensor]:
        geometry = self.geometry(info)
        inputs = _indexed(self.to_input(frame, geometry) for frame in frames)
        windows = centred_windows(inputs, self.radius, short_end=_upstream(info.params))
        for run in _window_batches(windows, self.batch):
            lq = torch.stack([window_tensor(window) for _, window in run])
            yield from self.forward(lq)


def window_tensor(window: list) -> torch.Tensor:
    """(T, 3, H, W) from a window of (index, frame tensor) items, None being black."""
    like = next(item for item in window if item is not None)[1]
    return torch.stack([item[1] if item is not None else torch.zeros_like(like)
                        for item in window])


def _indexed(items: Iterable) -> Iterator[tuple[int, object]]:
    return ((i, item) for i, item in enumerate(items))


class TapeStage(AnalogStage):
    """TAPE: five frames and the centre frame's five references in, the centre one out."""

    model = MODEL

    def __init__(self, network, device="cpu", half=None, weights=None, batch=None,
                 window_frames: int = 2 * RADIUS + 1, scorer: ClipScorer | None = None,
                 precision: str | None = None):
        super().__init__(network, device, half, weights, batch, window_frames, precision)
        self.scorer = scorer

    def geometry(self, info: ClipInfo) -> Geometry:
        _upstream(info.params)
        return tape_geometry(info.height, info.width, _int_param(info.params, "patch_size"))

    def validate(self, info: ClipInfo) -> None:
        super().validate(info)
        given = info.params.get("references", "")
        _scope(info.params)
        if given:
            _parse_references(given)
        elif self.scorer is None:
            raise StageError("tape selects references with CLIP RN50x4, whose weights "
                             f"({CLIP_FILE}) are not loaded: pull them, or pass "
                             "params references=[[i, ...], ...] (five indices per frame)")

    def restore(self, info: ClipInfo, frames: Iterator[np.ndarray]) -> Iterator[torch.Tensor]:
        geometry = self.geometry(info)
        spool = FrameSpool()
        given = bool(info.params.get("references"))
        try:
            features = self._spool(frames, spool, given)
            count = len(spool)
            if not given and count and _scope(info.params) == "input":
                features += self._spool(_pool(info), spool, given)
            references = self._references(info, features, count)
            yield from self._restore(spool, references, geometry, count)
        finally:
            spool.close()

    def _spool(self, frames, spool: FrameSpool, given: bool) -> list[torch.Tensor]:
        """First pass: keep every frame on disk, and its CLIP feature when we select."""
        features = []
        for frame in frames:
            spool.append(frame)
            if not given:
                features.append(self.scorer.image_feature(_as_uint8(frame)))
        return features

    def _references(self, info: ClipInfo, features: list, count: int) -> np.ndarray:
        given = info.params.get("references", "")
        if given:
            return _check_references(_parse_references(given), count)
        if not features:
            return np.zeros((0, REFERENCES), dtype=np.int64)
        chosen = selection(torch.cat(features), self.scorer.text_features, REFERENCES,
                           upstream_bug=_upstream(info.params))
        return chosen["references"][:count]

    def _restore(self, spool: FrameSpool, references: np.ndarray, geometry: Geometry,
                 count: int):
        """Second pass: sliding five-frame windows over the clip's frames in the spool (the
        input's frames after them are references only), in batches."""
        refs_cache: OrderedDict = OrderedDict()
        inputs = (self.to_input(frame, geometry) for frame in itertools.islice(spool, count))
        windows = centred_windows(_indexed(inputs), self.radius)
        for run in _window_batches(windows, self.batch):
            lq = torch.stack([window_tensor(window) for _, window in run])
            refs = torch.stack([self._reference_tensor(spool, references[centre], geometry,
                                                       refs_cache) for centre, _ in run])
            yield from self.forward(lq, refs)

    def _reference_tensor(self, spool, indices, geometry, cache: OrderedDict) -> torch.Tensor:
        """The references of one window; recently used ones stay converted (a clip's
        references are few frames, chosen again and again)."""
        tensors = []
        for index in (int(i) for i in indices):
            if index not in cache:
                cache[index] = self.to_input(spool[index], geometry)
                if len(cache) > 4 * REFERENCES:
                    cache.popitem(last=False)
            cache.move_to_end(index)
            tensors.append(cache[index])
        return torch.stack(tensors)


def _scope(params) -> str:
    value = params.get("reference_scope", "input")
    if value not in ("input", "shot"):
        raise StageError(f"reference_scope must be 'input' or 'shot', not {value!r}")
    return value


def _pool(info: ClipInfo) -> Iterator[np.ndarray]:
    """The input's frames beyond the clip that the header carries (``references``: the
    orchestrator's picks over the whole input), at the clip's frame size and format, as
    candidate references."""
    for data in info.references:
        image = torch.from_numpy(decode_reference(data)).permute(2, 0, 1)[None].float()
        if image.shape[-2:] != (info.height, info.width):
            image = F.interpolate(image, size=(info.height, info.width), mode="bilinear",
                                  align_corners=False, antialias=True)
        frame = image[0].permute(1, 2, 0).clamp(0, 255)
        yield (frame.round().to(torch.uint8).numpy() if info.pixel_format == "rgb24"
               else (frame / 255.0).half().numpy())


def _as_uint8(frame: np.ndarray) -> np.ndarray:
    if frame.dtype == np.uint8:
        return frame
    return (np.clip(frame.astype(np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)


def _parse_references(text: str) -> np.ndarray:
    try:
        rows = np.asarray(json.loads(text), dtype=np.int64)
    except (ValueError, TypeError):
        raise StageError("references must be JSON: a list with, per frame, a list of "
                         "frame indices") from None
    if rows.ndim != 2 or rows.shape[1] == 0:
        raise StageError(f"references must be a list of equal-length index lists, "
                         f"not shape {rows.shape}")
    return rows


def _check_references(rows: np.ndarray, count: int) -> np.ndarray:
    if len(rows) != count:
        raise StageError(f"references lists {len(rows)} frames, the clip has {count}")
    if rows.size and (rows.min() < 0 or rows.max() >= count):
        raise StageError(f"reference indices must lie in [0, {count})")
    return rows


# ----------------------------------------------------------------------------- loading

def read_arch(arch: Path | None) -> tuple[dict, list[str]]:
    """Network kwargs per model and the state keys allowed to be absent (regexes).

    Accepts a parity ``config.json`` (``networks`` with ``tiny_kwargs``/``extra_tiny_kwargs``,
    ``state.missing_ok``) or a plain {"tape": {...}, "swinunet": {...}}."""
    config = read_config(arch) or {}
    if "networks" not in config:
        return {name: config.get(name, {}) for name in (MODEL, SWINUNET)}, []
    kwargs = {FIXTURE_NAMES.get(entry["name"], entry["name"]): tiny_kwargs(entry)
              for entry in config["networks"]}
    return kwargs, config_missing_ok(config)


def build_network(model: str, kwargs: dict) -> torch.nn.Module:
    return build_tape(**kwargs) if model == MODEL else build_swinunet(**kwargs)


def unwrap_checkpoint(model: str, checkpoint: dict) -> dict:
    """The state dict inside an authors' file. TAPE ships a plain state dict (its
    Lightning training checkpoints keep it under 'state_dict' with the prefix 'net.');
    the Swin-UNet ships a Lightning checkpoint whose 'state_dict' holds the network under
    'net_g.' beside the losses' networks, which are dropped."""
    if "state_dict" not in checkpoint:
        return dict(checkpoint)
    prefix = "net." if model == MODEL else "net_g."
    state = checkpoint["state_dict"]
    kept = {name: value for name, value in state.items() if name.startswith(prefix)}
    if not kept:
        raise WeightsError(f"the {model} checkpoint's state_dict has no key under '{prefix}'")
    return unwrap({"state_dict": kept}, "state_dict", prefix)


def read_states(weights: Path | None) -> dict[str, tuple[dict, Path]]:
    """{model: (state dict, file)} for every network whose weights are found.

    ``weights`` is a folder holding the authors' files under the manifest's names (default:
    the weights store), one authors' file (its wrapping tells which network it is), or a
    safetensors file with keys ``tape.``/``mm22.`` (the parity fixtures' layout)."""
    path = Path(weights) if weights is not None else weights_dir() / MODEL
    if path.is_dir():
        found = {model: path / name for model, name in CHECKPOINTS.items() if (path / name).is_file()}
        return {model: (unwrap_checkpoint(model, load_checkpoint(file)), file)
                for model, file in found.items()}
    checkpoint = load_checkpoint(path)
    prefixed = _split_prefixed(checkpoint)
    if prefixed:
        return {model: (state, path) for model, state in prefixed.items()}
    model = SWINUNET if any(k.startswith("net_g.") for k in checkpoint.get("state_dict", {})) \
        else MODEL
    return {model: (unwrap_checkpoint(model, checkpoint), path)}


def _split_prefixed(checkpoint: dict) -> dict[str, dict]:
    prefixes = {f"{name}.": model for name, model in FIXTURE_NAMES.items()}
    if not checkpoint or not all(isinstance(k, str) and k.split(".", 1)[0] + "." in prefixes
                                 for k in checkpoint):
        return {}
    split: dict[str, dict] = {}
    for key, value in checkpoint.items():
        head, rest = key.split(".", 1)
        split.setdefault(prefixes[head + "."], {})[rest] = value
    return split


def load_network(model: str, state: dict, kwargs: dict, missing_ok: list[str]) -> torch.nn.Module:
    network = build_network(model, kwargs)
    return load_into(network, state, missing_ok=keys_matching(network, missing_ok)).eval()


def verify_checkpoint(name: str, path: Path, arch: Path | None = None) -> None:
    """Load ``path``, the manifest's file ``name``, as the service does: strictly, on the
    CPU (``arch``: the network configuration, None for the released one)."""
    if name == CLIP_FILE:
        ClipScorer.load_model(path, torch.device("cpu"))
        return
    model = next(model for model, file in CHECKPOINTS.items() if file == name)
    kwargs, missing_ok = read_arch(arch)
    load_network(model, unwrap_checkpoint(model, load_checkpoint(path)), kwargs.get(model, {}),
                 missing_ok)


def create_stage(weights: Path | None = None, device: str = "auto", arch: Path | None = None,
                 half: bool | None = None, precision: str | None = None) -> list[Stage]:
    """The service's stages: ``tape`` first (the task's default), then ``swinunet``, for
    each network whose checkpoint is found. CLIP RN50x4 is loaded from ``RN50x4.pt`` beside
    the checkpoints when present; without it TAPE needs ``references`` in the request."""
    chosen = pick_device(device)
    kwargs, missing_ok = read_arch(arch)
    states = read_states(weights)
    if not states:
        place = weights if weights is not None else weights_dir() / MODEL
        raise WeightsError(f"no {MODEL} or {SWINUNET} checkpoint in {place} "
                           f"(expected {', '.join(CHECKPOINTS.values())})")
    stages: list[Stage] = []
    if MODEL in states:
        state, file = states[MODEL]
        network = load_network(MODEL, state, kwargs.get(MODEL, {}), missing_ok)
        stages.append(TapeStage(network, chosen, half, file, scorer=_scorer(weights, chosen),
                                precision=precision))
    if SWINUNET in states:
        state, file = states[SWINUNET]
        network = load_network(SWINUNET, state, kwargs.get(SWINUNET, {}), missing_ok)
        stages.append(SwinUNetStage(network, chosen, half, file, precision=precision))
    return stages


def _scorer(weights: Path | None, device: torch.device) -> ClipScorer | None:
    folder = Path(weights) if weights is not None else weights_dir() / MODEL
    if folder.is_file():
        folder = folder.parent
    clip_file = folder / CLIP_FILE
    if not clip_file.is_file():
        return None
    refuse_unverified(clip_file)     # open_clip reads it itself: the store's check first
    return ClipScorer(clip_file, device)

