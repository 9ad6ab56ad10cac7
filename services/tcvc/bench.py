"""Forward time of the official configuration (random weights) beside the authors'.

The parity README timed the authors' code on a shared 2-core CPU with torch threads = 2,
the median of 3 runs: stage 1 (ColorVidNet on (1, 8, 216, 384)) 1.76 s, and one stage-2
clip (VCTran + decoder + inter_save on the reference + 3 frames at 216x384) 36.9 s. Ours is
timed the same way (stage 2 once by default: a run is half a minute). With CUDA, rows for
frames/s through the whole stage at 360x240 in float32 and half precision are added.
"""
from __future__ import annotations

import statistics
import time
from fractions import Fraction

import numpy as np
import torch

from . import MODEL
from .network import build_networks
from .stage import CLIP_FRAMES, TEMPERATURE_WARP, Colorizer, TCVCStage
from services.stagekit.stage import ClipInfo

AUTHORS_S = {"stage1": 1.76, "stage2": 36.9}
SIZE = (216, 384)


def random_networks(seed: int = 0):
    """The official networks with random weights (1/sqrt(fan-in) scaled, so activations stay
    finite through the 23-block layer3), filled faster than the default initialisation."""
    torch.manual_seed(seed)
    with torch.device("meta"):
        nets = build_networks()
    nets = nets.to_empty(device="cpu")
    with torch.no_grad():
        for name, tensor in nets.state_dict().items():
            if tensor.dim() > 1:
                tensor.normal_(0, (tensor[0].numel()) ** -0.5)
            elif name.endswith(("running_var", "weight")):
                tensor.fill_(1.0)
            else:
                tensor.zero_()
    return nets.eval()


def _median_seconds(fn, runs: int, threads: int) -> tuple[float, float]:
    """Median wall seconds, and median process CPU seconds per thread: on a shared machine
    the second is close to what the wall time would be without the other tenants."""
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append((time.process_time() - cpu) / threads)
    return statistics.median(walls), statistics.median(cpus)


def cpu_seconds(runs1: int = 3, runs2: int = 1, threads: int = 2) -> dict:
    """{stage: (wall s, CPU s per thread)} for stage 1 and one stage-2 clip."""
    torch.set_num_threads(threads)
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
        nets.colornet(x)
        return {"stage1": _median_seconds(lambda: nets.colornet(x), runs1, threads),
                "stage2": _median_seconds(stage2, runs2, threads)}


def cuda_fps(half: bool, frames: int = 24) -> float:
    """Frames/s through the whole stage (stage 1 + propagation) for a 360x240 grey clip."""
    nets = random_networks()
    stage = TCVCStage(Colorizer(nets, "cuda", torch.float16 if half else torch.float32), [])
    clip = np.repeat(np.random.default_rng(0).integers(0, 255, (frames, 240, 360, 1), np.uint8), 3, -1)
    info = ClipInfo("bench", 360, 240, Fraction(30), frame_count=frames)
    list(stage.process(info, iter(clip[:4])))
    torch.cuda.synchronize()
    start = time.perf_counter()
    count = sum(1 for _ in stage.process(info, iter(clip)))
    torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def rows() -> list[dict]:
    ours = cpu_seconds()
    labels = {"stage1": "ColorVidNet 1x8x216x384, CPU 2 thr",
              "stage2": "stage-2 clip 4x216x384, CPU 2 thr"}
    out = [{"model": MODEL, "input": labels[k], "ours_s": round(ours[k][0], 3),
            "authors_s": AUTHORS_S[k], "ratio": round(ours[k][0] / AUTHORS_S[k], 3),
            "cpu_per_thread_s": round(ours[k][1], 3)} for k in labels]
    if torch.cuda.is_available():
        for half in (False, True):
            fps = cuda_fps(half)
            out.append({"model": MODEL, "input": f"stage 360x240 {'fp16' if half else 'fp32'} frames/s",
                        "ours_s": round(1 / fps, 4), "authors_s": None, "ratio": None, "fps": round(fps, 2)})
    return out


if __name__ == "__main__":
    for row in rows():
        print(row)
