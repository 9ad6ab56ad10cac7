"""The inpaint stage around MAT: the authors' per-image procedure, applied to each frame.

What ``generate_image.py`` does, kept:
- RGB uint8 -> float / 127.5 - 1; the mask is 1 on known pixels, 0 on the hole;
- the network's input size must be a multiple of its resolution (512 for the released
  models): the frame is padded and the padding counts as hole ("pad the mask with 0");
- z ~ N(0, 1) in float64 from ``np.random.RandomState(seed)`` (their seed is 240; the first
  image's z is ``RandomState(240).randn(1, z_dim)``), no label, truncation psi 1;
- noise 'const' when the padded input is exactly the native size, else 'random' (their
  script forces 'random' for any other resolution, and 'const' cannot broadcast there);
- output * 127.5 + 127.5, rounded, clamped, uint8.

What the restoration pipeline adds:
- the hole is the damaged border band of each frame (``band``: by default the bands the
  orchestrator's analysis found, the clip header's "bands", else all four sides 20 px as
  the seed masked; or e.g. ``left=7,bottom=5``); the frame is centred in its padding,
  so each side's band meets the same amount of hole;
- known pixels are copied from the input, bit for bit (uint8 or float16 frames);
- the network's random numbers are seeded (``seed``, default 240). Dropout runs even in
  eval mode upstream; its keep-masks and any 'random' noise maps come from
  ``np.random.default_rng([seed, k])``. With ``draws=clip`` (default) every frame uses
  k = 0 and the first z, so a band is filled the same way from frame to frame; with
  ``draws=frame`` frame i uses k = i and the i-th z of the seed's stream, as the
  authors' script does for a folder of images. Either way the output does not depend on
  how the clip is batched or split into requests.
- $RESTORATION_MAT_DRAWS may name an .npz of recorded draws (z, drop_mask_stg1,
  drop_mask_stg2, noise__<layer>; row i for frame i), to replay the authors' exact run.

Frames are independent (window 0); memory is bounded by one batch.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from services.stagekit.bands import Bands, header_bands, bands_rebuilt
from services.stagekit.device import pick_device, precision_name
from services.stagekit.neural import NeuralStage, default_batch, load_into
from services.stagekit.stage import ClipInfo, StageError
from services.stagekit.weights import WeightsError, checkpoint_file, sha256_file
from services.stagekit.windowing import batches

from . import MODEL, TASK
from .network import Draws, Generator, build_network, load_arch

DEFAULT_BAND = 20
DEFAULT_SEED = 240          # generate_image.py's seed
CONVERTED = ".safetensors"
DRAWS_ENV = "RESTORATION_MAT_DRAWS"


@dataclass(frozen=True)
class Settings:
    bands: Bands
    seed: int
    per_frame: bool


@dataclass(frozen=True)
class Layout:
    """Where a frame sits in the network's input: padded to multiples of the resolution."""
    height: int
    width: int
    padded_height: int
    padded_width: int

    @classmethod
    def of(cls, height: int, width: int, resolution: int) -> "Layout":
        return cls(height, width, -(-height // resolution) * resolution,
                   -(-width // resolution) * resolution)

    @property
    def top(self) -> int:
        return (self.padded_height - self.height) // 2

    @property
    def left(self) -> int:
        return (self.padded_width - self.width) // 2

    def frame(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)

    def mask(self, bands: Bands) -> np.ndarray:
        """(H', W') float32: 1 on the frame's known inside, 0 on its bands and the padding."""
        mask = np.zeros((self.padded_height, self.padded_width), np.float32)
        rows, cols = bands.known(self.height, self.width)
        mask[self.top + rows.start:self.top + rows.stop, self.left + cols.start:self.left + cols.stop] = 1
        return mask


class FrameDraws(Draws):
    """Draws whose every row (frame) comes from that frame's own numpy generator, so a
    frame's random numbers do not depend on the batch it is in."""

    def __init__(self, generators: list[np.random.Generator], keep=None, noise=None):
        super().__init__(keep, noise)
        self.generators = generators

    def sample(self, kind: str, shape) -> torch.Tensor:
        rows = []
        for generator in self.generators:
            values = generator.random(shape[1:]) if kind == "keep" else generator.standard_normal(shape[1:])
            rows.append((values < 0.5) if kind == "keep" else values)
        return torch.from_numpy(np.stack(rows).astype(np.float32))


class Randomness:
    """z and the network's draws for frame i of a clip (called with i = 0, 1, 2, ...)."""

    def __init__(self, z_dim: int, seed: int, per_frame: bool, recorded: dict | None = None):
        self.z_dim = z_dim
        self.seed = seed
        self.per_frame = per_frame
        self.recorded = recorded
        self.stream = np.random.RandomState(seed)
        self.first_z = None

    def z(self, index: int) -> np.ndarray:
        if self.recorded is not None:
            return self.recorded_row("z", index)
        if self.per_frame:
            return self.stream.randn(1, self.z_dim)
        if self.first_z is None:
            self.first_z = self.stream.randn(1, self.z_dim)
        return self.first_z

    def draws(self, indices: list[int]) -> Draws:
        if self.recorded is None:
            return FrameDraws([np.random.default_rng([self.seed, i if self.per_frame else 0])
                               for i in indices])
        keep = {name: np.concatenate([self.recorded_row(f"drop_mask_{name}", i) for i in indices])
                for name in ("stg1", "stg2")}
        noise = {key[len("noise__"):]: np.concatenate([self.recorded_row(key, i) for i in indices])
                 for key in self.recorded if key.startswith("noise__")}
        return Draws(keep, noise)

    def recorded_row(self, key: str, index: int) -> np.ndarray:
        values = self.recorded.get(key)
        if values is None or index >= len(values):
            raise StageError(f"inpaint/mat: the recorded draws have no {key} for frame {index}")
        return values[index:index + 1]


class MatStage(NeuralStage):
    task = TASK
    model = MODEL
    window = (0, 0)
    params = ("band", "seed", "draws")

    def __init__(self, network: Generator, device: torch.device | str = "cpu",
                 half: bool | None = None, identity: str = "", recorded: dict | None = None,
                 precision: str | None = None):
        # Weights stay float32; in half precision, autocast runs the convolutions and matmuls.
        super().__init__(network, device, half=half, identity=identity, precision=precision)
        self.recorded = recorded
        # A 512x512 forward holds ~1 GB of activations in float32; a GPU gains from more.
        self.max_batch = default_batch(self.device)
        self.backend = self.torch_backend(f"{precision_name(self.dtype)} autocast" if self.half
                                          else "float32")

    def validate(self, info: ClipInfo) -> None:
        super().validate(info)
        self.settings(info)

    def output_info(self, info: ClipInfo) -> ClipInfo:
        return bands_rebuilt(super().output_info(info))   # inpainted here

    def settings(self, info: ClipInfo) -> Settings:
        unknown = sorted(set(info.params) - set(self.params))
        if unknown:
            raise StageError(f"inpaint/mat: unknown parameter(s) {', '.join(unknown)} "
                             f"(known: {', '.join(self.params)})")
        given = info.params.get("band", "")
        found = header_bands(info, "inpaint/mat") if given.strip().lower() in ("", "auto") else None
        bands = parse_bands(given, info.width, info.height, found)
        seed = parse_seed(info.params.get("seed", ""))
        draws = info.params.get("draws", "clip").strip().lower() or "clip"
        if draws not in ("clip", "frame"):
            raise StageError(f"inpaint/mat: draws must be clip or frame, not {draws!r}")
        return Settings(bands, seed, draws == "frame")

    def process(self, info: ClipInfo, frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        settings = self.settings(info)
        if not settings.bands.any():
            yield from frames
            return
        layout = Layout.of(info.height, info.width, self.network.img_resolution)
        mask = torch.from_numpy(layout.mask(settings.bands)).to(self.device)[None, None]
        randomness = Randomness(self.network.z_dim, settings.seed, settings.per_frame, self.recorded)
        index = 0
        for batch in batches(frames, self.max_batch):
            indices = list(range(index, index + len(batch)))
            index += len(batch)
            yield from self.fill(batch, indices, layout, mask, settings.bands, randomness)

    def fill(self, batch: list[np.ndarray], indices: list[int], layout: Layout, mask: torch.Tensor,
             bands: Bands, randomness: Randomness) -> Iterator[np.ndarray]:
        z = torch.from_numpy(np.concatenate([randomness.z(i) for i in indices])).to(self.device)
        with torch.inference_mode():
            images = self.padded(batch, layout)
            masks = mask.expand(len(batch), -1, -1, -1)
            out = self.forward(images, masks, z, lambda: randomness.draws(indices), layout)
            rows, cols = layout.frame()
            out = out[:, :, rows, cols].permute(0, 2, 3, 1)
            made = to_frames(out, batch[0].dtype)
        known = bands.known(layout.height, layout.width)
        for frame, result in zip(batch, made):
            result[known] = frame[known]
            yield result

    def forward(self, images, masks, z, draws: Callable[[], Draws], layout: Layout) -> torch.Tensor:
        """The network's output; ``draws`` makes a fresh copy of the batch's draws."""
        native = (layout.padded_height, layout.padded_width) == (self.network.img_resolution,) * 2
        noise_mode = "const" if native else "random"
        if self.half:
            with self.autocast():
                out = self.network(images, masks, z, noise_mode=noise_mode, draws=draws())
            if torch.isfinite(out).all():
                return out.float()
            # Overflow in float16 (unusual activations): this batch again in float32.
        return self.network(images, masks, z, noise_mode=noise_mode, draws=draws())

    def padded(self, batch: list[np.ndarray], layout: Layout) -> torch.Tensor:
        """(B, 3, H', W') in [-1, 1]; the padding is 0 (it is hole: the network never sees it)."""
        frames = torch.from_numpy(np.stack(batch)).to(self.device).permute(0, 3, 1, 2)
        if frames.dtype == torch.uint8:
            values = frames.float() / 127.5 - 1
        else:
            values = frames.float() * 2 - 1
        images = torch.zeros(len(batch), 3, layout.padded_height, layout.padded_width,
                             device=self.device)
        rows, cols = layout.frame()
        images[:, :, rows, cols] = values
        return images


def to_frames(out: torch.Tensor, dtype) -> list[np.ndarray]:
    """(B, H, W, 3) in [-1, 1] -> frames: uint8 as generate_image.py writes them
    (x * 127.5 + 127.5, rounded half to even, clamped), or float16 in [0, 1]."""
    if dtype == np.uint8:
        out = (out * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8)
    else:
        out = ((out + 1) / 2).clamp(0, 1).to(torch.float16)
    return list(out.cpu().numpy())


def parse_bands(value: str, width: int, height: int, found: Bands | None = None) -> Bands:
    """The ``band`` parameter; auto (the default): ``found``, the bands the orchestrator's
    analysis found, or DEFAULT_BAND on every side when it sent none."""
    text = value.strip().lower()
    if text in ("", "auto"):
        bands = found if found is not None else Bands(*[DEFAULT_BAND] * 4)
    elif text == "none":
        bands = Bands()
    elif re.fullmatch(r"\d+", text):
        bands = Bands(*[int(text)] * 4)
    else:
        sizes = {}
        for part in text.split(","):
            match = re.fullmatch(r"\s*(left|right|top|bottom)\s*=\s*(\d+)\s*", part)
            if not match or match[1] in sizes:
                raise StageError(f"inpaint/mat: band={value!r} must be a width in pixels, "
                                 f"none, or e.g. left=7,bottom=5")
            sizes[match[1]] = int(match[2])
        bands = Bands(**sizes)
    if bands.left + bands.right >= width or bands.top + bands.bottom >= height:
        raise StageError(f"inpaint/mat: band={value!r} leaves nothing of a {width}x{height} frame")
    return bands


def parse_seed(value: str) -> int:
    text = value.strip()
    if not text:
        return DEFAULT_SEED
    if not re.fullmatch(r"\d{1,10}", text):
        raise StageError(f"inpaint/mat: seed={value!r} must be a non-negative integer")
    return int(text)


# ---- weights ------------------------------------------------------------------------------

def converted_name(name: str) -> str:
    return str(Path(name).with_suffix(CONVERTED))


def checkpoint_path(weights: Path | str | None) -> Path:
    """The converted checkpoint: the file given, else the first manifest file's converted
    form in the folder given or in the weights store. An authors' .pkl is refused: it must
    be converted first, in its own process (unpickling it would run the authors' code)."""
    if weights is not None and Path(weights).is_file() and Path(weights).suffix != CONVERTED:
        path = Path(weights)
        raise WeightsError(f"{path} is not a converted checkpoint; convert it once with "
                           f"'python -m services.mat.convert {path}' and load the "
                           f"{converted_name(path.name)} it writes")
    return checkpoint_file(MODEL, weights)


def load_network(weights: Path | str | None = None, arch: Path | str | dict | None = None
                 ) -> tuple[Generator, Path]:
    """The generator with G_ema's tensors loaded strictly. Only the shifted-window attention
    masks may be absent: constants of the configuration that forward recomputes."""
    network = build_network(**load_arch(arch))
    path = checkpoint_path(weights)
    constants = [name for name in network.state_dict() if name.endswith(".attn_mask")]
    return load_into(network, path, missing_ok=constants), path


def recorded_draws() -> dict | None:
    """The draws to replay, from the .npz that $RESTORATION_MAT_DRAWS names (if any)."""
    path = os.environ.get(DRAWS_ENV)
    if not path:
        return None
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files
                if key in ("z", "drop_mask_stg1", "drop_mask_stg2") or key.startswith("noise__")}


def verify_checkpoint(name: str, path: Path, arch: Path | str | dict | None = None) -> None:
    """Load ``path``, the manifest's file ``name``, as the service does: strictly, on the
    CPU (``arch``: the network configuration, None for the released one)."""
    load_network(path, arch)


def create_stage(weights: Path | str | None = None, device: str = "auto",
                 arch: Path | str | dict | None = None, half: bool | None = None,
                 precision: str | None = None) -> MatStage:
    """The stage with the converted checkpoint loaded strictly. ``device`` 'auto' lets
    $RESTORATION_DEVICE choose, else CUDA when present; half precision only when asked
    (``half``, or ``precision`` as stagekit.device rules)."""
    network, path = load_network(weights, arch)
    chosen = pick_device(device)
    return MatStage(network, chosen, half=half, identity=sha256_file(path),
                    recorded=recorded_draws(), precision=precision)

