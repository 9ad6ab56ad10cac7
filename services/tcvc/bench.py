"""Forward time of the official configuration (random weights) beside the authors'.

The parity README timed the authors' code on a shared 2-core CPU with torch threads = 2,
the median of 3 runs: stage 1 (ColorVidNet on (1, 8, 216, 384)) 1.76 s, and one stage-2
clip (VCTran + decoder + inter_save on the reference + 3 frames at 216x384) 36.9 s. Ours is
timed the same way (stage 2 once by default: a run is half a minute). With CUDA, rows for
frames/s through the whole stage at 360x240 in float32 and half precision are added.
"""
from __future__ import annotations

import statistics

import torch

from services.stagekit.benchmark import (fps_row, print_rows, random_clip, seconds_row,
                                         stage_frames_per_second, timings, torch_threads)
from services.stagekit.neural import unfilled

from . import MODEL
from .network import build_networks
from .stage import CLIP_FRAMES, TEMPERATURE_WARP, Colorizer, TCVCStage

AUTHORS_S = {"stage1": 1.76, "stage2": 36.9}
SIZE = (216, 384)


def random_networks(seed: int = 0):
    """The official networks with random weights (1/sqrt(fan-in) scaled, so activations stay
    finite through the 23-block layer3), filled faster than the default initialisation."""
    torch.manual_seed(seed)
    nets = unfilled(build_networks)
    with torch.no_grad():
        for name, tensor in nets.state_dict().items():
            if tensor.dim() > 1:
                tensor.normal_(0, (tensor[0].numel()) ** -0.5)
            elif name.endswith(("running_var", "weight")):
                tensor.fill_(1.0)
            else:
                tensor.zero_()
    return nets.eval()


def _median_seconds(fn, runs: int, threads: int, warmup: int) -> tuple[float, float]:
    """Median wall seconds, and median process CPU seconds per thread: on a shared machine
    the second is close to what the wall time would be without the other tenants."""
    made = timings(fn, runs, warmup)
    return statistics.median(t.wall for t in made), statistics.median(t.cpu / threads for t in made)


def cpu_seconds(runs1: int = 3, runs2: int = 1, threads: int = 2) -> dict:
    """{stage: (wall s, CPU s per thread)} for stage 1 (after a warm-up) and one stage-2
    clip."""
    with torch_threads(threads):
        return _cpu_seconds(runs1, runs2, threads)


def _cpu_seconds(runs1: int, runs2: int, threads: int) -> dict:
    nets = random_networks()
    h, w = SIZE
    x = torch.cat((torch.full((1, 4, h, w), 0.5), torch.zeros(1, 3, h, w),
                   torch.rand(1, 1, h, w) * 100 - 50), 1)
    rgb = torch.rand(CLIP_FRAMES, 3, h, w)
    l = torch.rand(1, CLIP_FRAMES, 1, h, w) * 100 - 50
    ref_ab = torch.rand(1, 1, 2, h, w) * 60 - 30
    memory = torch.randn(CLIP_FRAMES * (h // 8) * (w // 8), 1, nets.model.hidden_dim)

    def stage2():
        hs, out_trans, features, pos = nets.model(rgb, memory)
        nets.decoder(hs, out_trans, ref_ab, features, l, pos, TEMPERATURE_WARP)
        nets.inter_save(memory, out_trans)

    with torch.inference_mode():
        return {"stage1": _median_seconds(lambda: nets.colornet(x), runs1, threads, warmup=1),
                "stage2": _median_seconds(stage2, runs2, threads, warmup=0)}


def cuda_fps(half: bool, frames: int = 24) -> float:
    """Frames/s through the whole stage (stage 1 + propagation) for a 360x240 grey clip."""
    nets = random_networks()
    stage = TCVCStage(Colorizer(nets, "cuda", torch.float16 if half else torch.float32), [])
    return stage_frames_per_second(stage, clip=random_clip(frames, 360, 240, grey=True), warmup=4)


def rows() -> list[dict]:
    ours = cpu_seconds()
    labels = {"stage1": "ColorVidNet 1x8x216x384, CPU 2 thr",
              "stage2": "stage-2 clip 4x216x384, CPU 2 thr"}
    out = [seconds_row(MODEL, labels[k], ours[k][0], AUTHORS_S[k],
                       cpu_per_thread_s=round(ours[k][1], 3)) for k in labels]
    if torch.cuda.is_available():
        for half in (False, True):
            out.append(fps_row(MODEL, f"stage 360x240 {'fp16' if half else 'fp32'} frames/s",
                               cuda_fps(half)))
    return out


if __name__ == "__main__":
    print_rows(rows())
