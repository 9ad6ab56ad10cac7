"""The interpolate stage around SF-AdaCoF: the authors' inference procedure, streamed.

What ``interpolate_inference.py`` does, kept: frames as float32 RGB in [0, 1] (uint8 / 255,
like ``ToTensor``); the network pads, normalises and crops inside; each written frame is
quantised like torchvision's ``save_image`` (round half up, clamped); the output is
f_k, mid_k for each consecutive pair, and for 4x (their ``--repeat 2``) f_k, q1, mid, q3
with q1 = net(f_k, mid) and q3 = net(mid, f_k+1) on the unrounded, unclamped midpoint.

What differs, on purpose: the last input frame is kept (theirs never writes it) and held
for the remaining output slots, so N frames give factor * N frames and every input frame
keeps its timestamp exactly (output n is at start + n / (fps * factor)). A clip lies
between two shot cuts, so no frame is ever interpolated across one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from services.stagekit.device import pick_device
from services.stagekit.neural import NeuralStage, default_batch, load_into
from services.stagekit.stage import ClipInfo, StageError
from services.stagekit.weights import (WeightsError, checkpoint_file, load_checkpoint,
                                       sha256_file, unwrap)

from . import MODEL, TASK
from .network import AdaCoFNet, build_network, load_arch, min_side

# Output frames per input frame -> how many times the pair is halved (the authors' --repeat).
FACTORS = {"2": 1, "4": 2}


class SfAdaCoFStage(NeuralStage):
    task = TASK
    model = MODEL
    fps_factor = 2
    window = (0, 1)
    max_batch = 4
    # Only the kernel estimator goes to half: the AdaCoF op's truncation of offsets is
    # discontinuous, so sampling and blending stay in float32.
    cast = ("get_kernel",)

    def __init__(self, network: AdaCoFNet, device: torch.device | str = "cpu",
                 half: bool | None = None, identity: str = "", precision: str | None = None):
        super().__init__(network, device, half=half, identity=identity, precision=precision)
        # A CPU gains little from batching pairs while each pair at 720x480 needs ~0.7 GB of
        # activations; a GPU gains a lot.
        self.max_batch = default_batch(self.device)
        self.backend = self.torch_backend()

    def validate(self, info: ClipInfo) -> None:
        super().validate(info)
        factor_of(info)
        smallest = min_side()
        if info.width < smallest or info.height < smallest:
            raise StageError(f"{self.task}/{self.model} needs frames of at least "
                             f"{smallest}x{smallest}, not {info.width}x{info.height}")

    def output_info(self, info: ClipInfo) -> ClipInfo:
        factor = factor_of(info)
        count = None if info.frame_count is None else info.frame_count * factor
        return info.replace(fps=info.fps * factor, frame_count=count)

    def process(self, info: ClipInfo, frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """Consecutive runs of max_batch + 1 frames, each sharing its last frame with the
        next run, so the batches depend only on the clip, never on how it arrives."""
        factor = factor_of(info)
        run: list[np.ndarray] = []
        for frame in frames:
            run.append(frame)
            if len(run) == self.max_batch + 1:
                yield from self.between(run, factor)
                run = run[-1:]
        if len(run) > 1:
            yield from self.between(run, factor)
        if run:
            # Nothing follows the clip's last frame (a cut or the end): hold it.
            yield from [run[-1]] * factor

    def between(self, run: list[np.ndarray], factor: int) -> Iterator[np.ndarray]:
        """Each frame of ``run`` but the last, followed by its factor - 1 new frames."""
        made = self.interpolate(run, FACTORS[str(factor)])
        for index, frame in enumerate(run[:-1]):
            yield frame
            for new in made:
                yield new[index]

    def interpolate(self, run: list[np.ndarray], depth: int) -> list[np.ndarray]:
        """The new frames between consecutive frames of ``run``, in time order, each stacked
        over the pairs: [mid] for depth 1, [q1, mid, q3] for depth 2."""
        dtype = run[0].dtype
        with torch.inference_mode():
            stack = to_tensor(np.stack(run), self.device)
            first, second = stack[:-1], stack[1:]
            mid = self.network(first, second)
            made = [mid]
            if depth == 2:
                quarters = self.network(torch.cat([first, mid]), torch.cat([mid, second]))
                made = [quarters[:len(mid)], mid, quarters[len(mid):]]
            return [to_frames(frames, dtype) for frames in made]


def factor_of(info: ClipInfo) -> int:
    value = str(info.params.get("factor", "2")).strip()
    if value not in FACTORS:
        raise StageError(f"interpolate/sfadacof: factor must be one of "
                         f"{', '.join(FACTORS)}, not {value!r}")
    return int(value)


def to_tensor(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 or float16 -> (N, 3, H, W) float32 in [0, 1], as ``ToTensor``."""
    tensor = torch.from_numpy(frames).to(device).permute(0, 3, 1, 2)
    if tensor.dtype == torch.uint8:
        return tensor.to(torch.float32).div(255)
    return tensor.to(torch.float32)


def to_frames(tensor: torch.Tensor, dtype) -> np.ndarray:
    """(N, 3, H, W) float -> (N, H, W, 3) frames: uint8 rounded half up like ``save_image``."""
    if dtype == np.uint8:
        tensor = tensor.mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
    else:
        tensor = tensor.clamp(0, 1).to(torch.float16)
    return tensor.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def checkpoint_path(weights: Path | str | None) -> Path:
    """The checkpoint file: given, inside a given folder, or in the weights store."""
    return checkpoint_file(MODEL, weights)


def read_state(path: Path) -> dict:
    """The state dict as the authors ship it: {'epoch', 'state_dict'} in a .pth; a bare
    state dict in a safetensors file (the parity fixtures)."""
    checkpoint = load_checkpoint(path)
    if path.suffix == ".safetensors":
        return checkpoint
    if not isinstance(checkpoint, dict):
        raise WeightsError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return unwrap(checkpoint, "state_dict")


def load_network(weights: Path | str | None = None, arch: Path | str | dict | None = None
                 ) -> tuple[AdaCoFNet, Path]:
    network = build_network(**load_arch(arch))
    path = checkpoint_path(weights)
    return load_into(network, read_state(path)), path


def verify_checkpoint(name: str, path: Path, arch: Path | str | dict | None = None) -> None:
    """Load ``path``, the manifest's file ``name``, as the service does: strictly, on the
    CPU (``arch``: the network configuration, None for the released one)."""
    load_network(path, arch)


def create_stage(weights: Path | str | None = None, device: str = "auto",
                 arch: Path | str | dict | None = None, half: bool | None = None,
                 precision: str | None = None) -> SfAdaCoFStage:
    """The stage with the authors' checkpoint loaded strictly. ``device`` 'auto' lets
    $RESTORATION_DEVICE choose, else CUDA when present; half precision only when asked."""
    network, path = load_network(weights, arch)
    chosen = pick_device(device)
    return SfAdaCoFStage(network, chosen, half=half, identity=sha256_file(path),
                         precision=precision)
