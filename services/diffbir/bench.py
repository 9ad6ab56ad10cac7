"""Forward time of the official configuration (random weights) beside the authors'.

The parity README timed the authors' SwinIR (official kwargs) on a 1x3x512x512 input, the
smallest the pipeline ever feeds it, with torch 2.14.1 on a shared CPU with 2 threads:
runs of 29.1, 34.0 and 34.5 s, median 34.0 s. On a GPU, the whole stage's frames/s on
360x240 frames (each upscaled to 1440x960, the network run at 1472x960).

Stage 2 (``stage2_rows``): seconds per 512x512 frame of the stage-2 path (condition,
sampler at the release defaults, decode) with full-size random networks (SD 2.1 UNet,
IRControlNet, VAE, OpenCLIP text tower in the released configuration), on the CPU and,
where there is one, on the GPU in fp32 and fp16 with the fp16 frame's error against fp32.
The authors published no stage-2 timing. ``flicker_rows``: how much a short real clip
flickers after stage 2 with the clip's shared seed and with a new seed per frame, beside
the stage-1 output it starts from (the fixture's tiny networks: random weights, so the
figures are about the noise, not about the pictures).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from services.stagekit.benchmark import (fps_row, median_seconds, print_rows, seconds_row,
                                         stage_frames_per_second, timings, torch_threads)

from . import MODEL
from .network import build_swinir
from .checkpoints import build_stage2, load_stage2_tiny
from .stage import DiffBIRStage, Settings, on_device_all
from .stage2 import Sampling, Stage2

AUTHORS_S = {512: 34.0}


def forward_seconds(size: int = 512, runs: int = 3, threads: int = 2) -> float:
    """The median of ``runs`` timed forwards after one warm-up."""
    torch.manual_seed(0)
    network = build_swinir().eval()
    x = torch.rand(1, 3, size, size)
    return median_seconds(lambda: network(x), runs, threads)


def gpu_frames_per_second(half: bool, width: int = 360, height: int = 240,
                          count: int = 16) -> float:
    """Output frames/s of the stage on CUDA, uint8 in and out, after a warm-up batch."""
    stage = DiffBIRStage(build_swinir(), "cuda", half=half, settings=Settings(batch=4))
    return stage_frames_per_second(stage, width, height, count, warmup=4)


def gpu_rows() -> list[dict]:
    if not torch.cuda.is_available():
        return []
    name = torch.cuda.get_device_name()
    return [fps_row(MODEL, f"360x240 clip, {name}, {label}", fps)
            for label, fps in (("fp32", gpu_frames_per_second(False)),
                               ("fp16 autocast", gpu_frames_per_second(True)))]


def stage2_seconds(device: str = "cpu", half: bool = False, size: int = 512,
                   steps: int = Sampling.steps, threads: int = 2) -> tuple[float, torch.Tensor]:
    """(seconds, sample) of one stage-2 frame at ``size`` x ``size`` with full-size random
    networks, the release's sampling (prompt encoding included, as for a clip's first
    frame), after a one-step warm-up."""
    torch.manual_seed(0)
    stage2 = Stage2(on_device_all(build_stage2(), torch.device(device),
                                  torch.float16 if half else torch.float32),
                    autocast=(lambda: torch.autocast("cuda", torch.float16)) if half else nullcontext)
    cond = torch.rand(1, 3, size, size, device=device)
    with torch_threads(threads), torch.inference_mode():
        stage2.sample(cond, Sampling(steps=1))
        stage2.text.cache_clear()
        sample = []
        [timing] = timings(lambda: sample.append(stage2.sample(cond, Sampling(steps=steps))),
                           runs=1, warmup=0)
    return timing.wall, sample[0].float().cpu()


def stage2_rows(size: int = 512) -> list[dict]:
    seconds, _ = stage2_seconds("cpu", size=size)
    rows = [seconds_row(MODEL, f"stage 2 {size}x{size}, CPU, 2 thr", seconds, digits=1,
                        sampler=Sampling.sampler, steps=Sampling.steps)]
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        full_s, full = stage2_seconds("cuda", False, size)
        half_s, half = stage2_seconds("cuda", True, size)
        error = float((half - full).norm() / full.norm())
        rows += [seconds_row(MODEL, f"stage 2 {size}x{size}, {name}, fp32", full_s, digits=3),
                 seconds_row(MODEL, f"stage 2 {size}x{size}, {name}, fp16", half_s, digits=3,
                             rel_l2_vs_fp32=f"{error:.2e}")]
    return rows


FLICKER_CLIP = "oldfilm_003.mp4"     # the shared footage: real old film, a house, little motion


def flicker_rows(frames: int = 4, crop: int = 32, steps: int = 4) -> list[dict]:
    """Mean absolute change between consecutive output frames (8-bit levels) of a
    ``crop``-pixel square of real footage (upscaled 4x, stage 1 at 512x512), through stage
    2 with the tiny fixture networks: one seed for the clip, a new seed per frame."""
    from services.stagekit.parity import load_config
    from services.stagekit.testing import parity_dir, shared_dir

    from .parity import tiny_stage
    folder, footage = parity_dir(MODEL), shared_dir() / "footage" / FLICKER_CLIP
    if not (folder / "config.json").is_file() or not footage.is_file():
        return []
    stage = DiffBIRStage(tiny_stage(load_config(folder)).network, "cpu",
                         stage2=load_stage2_tiny(folder))
    clip = read_frames(footage, frames, crop)
    settings = replace(stage.settings, steps=steps)

    def run(stage_settings: list[Settings]) -> np.ndarray:
        with torch_threads(2):
            return np.stack([stage.to_frames(stage.restore(stage.upscaled(frame[None]), s),
                                             "rgb24")[0] for frame, s in zip(clip, stage_settings)])

    def flicker(out: np.ndarray) -> float:
        return float(np.abs(np.diff(out.astype(np.float64), axis=0)).mean())

    stage1 = flicker(run([replace(settings, stage=1)] * frames))
    shared = flicker(run([settings] * frames))
    reseeded = flicker(run([replace(settings, seed=settings.seed + i) for i in range(frames)]))
    label = f"{frames} frames {crop}px->512, tiny nets"
    return [{"model": MODEL, "input": f"flicker stage 1, {label}", "flicker": round(stage1, 2)},
            {"model": MODEL, "input": f"flicker shared seed, {label}", "flicker": round(shared, 2),
             "vs_stage1": round(shared / stage1, 2)},
            {"model": MODEL, "input": f"flicker seed per frame, {label}",
             "flicker": round(reseeded, 2), "vs_stage1": round(reseeded / stage1, 2)}]


def read_frames(path: Path, count: int, crop: int) -> np.ndarray:
    """The first ``count`` frames of a video, RGB, the centre ``crop`` square."""
    import av
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for _, f in zip(range(count), container.decode(video=0))]
    height, width = decoded[0].shape[:2]
    top, left = (height - crop) // 2, (width - crop) // 2
    return np.stack([f[top:top + crop, left:left + crop] for f in decoded])


def rows(size: int = 512, runs: int = 3) -> list[dict]:
    ours = forward_seconds(size, runs)
    authors = AUTHORS_S[size]
    return [seconds_row(MODEL, f"1x3x{size}x{size}, CPU, 2 threads", ours, authors, digits=2),
            *gpu_rows(), *flicker_rows(), *stage2_rows(size)]


if __name__ == "__main__":
    print_rows(rows())
