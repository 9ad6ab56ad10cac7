"""`make bench-neural`: what each neural model of the chain costs at the pipeline's real sizes.

For each of the seven video models, in the chain's order, at the size its stage sees in the
pipeline (360x240 working frames; SF-AdaCoF after PSRT's 4x, at 1440x960): seconds per output
frame, the stage's peak memory, and what one hour of tape would take. Full-size checkpoints
with random weights in the authors' layouts (services/stagekit/randomweights.py), through
each model's own ``create_stage`` and ``Stage.run``, one model per child process (so each
peak is its own and memory is given back between models).

    python -m bench.neural                       # this CPU, fp32, 3 frames per model
    python -m bench.neural --device cuda         # + fp16/bf16 against fp32, PSRT chunking
    python -m bench.neural --models tape,rvrt --frames 2 --precisions fp32,bf16

Error columns compare a precision's output frames with fp32's, in 8-bit levels (max and
mean absolute difference); the PSRT rows compare its chunked run (``chunk`` frames,
``overlap`` shared) with one pass over the whole clip. Random weights give realistic
activations (the networks' own initialisation), not the trained models' outputs: the error
figures bound what half precision and chunking do to the arithmetic, not to picture quality.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

MODELS = ("tape", "propainter", "mmprnn", "tcvc", "rvrt", "psrt", "sfadacof")   # chain order
WORKING = (360, 240)                 # the pipeline's working size for a tape (W, H)
UPSCALED = (1440, 960)               # after PSRT's 4x: what SF-AdaCoF interpolates
# model: (the stage's task/model name in a multi-stage service, input size, clip params)
INPUTS = {
    "tape": ("tape", WORKING, {}),
    "propainter": ("propainter", WORKING, {"band": "0,5,7,0"}),   # tape_sim's damaged bands
    "mmprnn": ("mmprnn", WORKING, {}),
    "tcvc": ("tcvc", WORKING, {"scenes": "all"}),
    "rvrt": ("rvrt", WORKING, {"sigma": "10"}),
    "psrt": ("psrt", WORKING, {}),
    "sfadacof": ("sfadacof", UPSCALED, {}),
}
TAPE_FPS = 30000 / 1001              # frames per second of tape reaching the chain


# --- input --------------------------------------------------------------------------------

def input_frames(count: int, size: tuple[int, int], grey: bool = False) -> np.ndarray:
    """``count`` frames at ``size`` (W, H): the clean cockatoo footage where ../shared has
    it (a moving bird: real motion for the temporal models), else smooth moving noise."""
    import cv2
    from services.stagekit.testing import shared_dir
    path = shared_dir() / "footage" / "cockatoo_clean.mp4"
    if path.is_file():
        import av
        with av.open(str(path)) as container:
            decoded = [f.to_ndarray(format="rgb24") for _, f in
                       zip(range(40 + count), container.decode(video=0))][40:]
        frames = [cv2.resize(f[:, 160:1120], size, interpolation=cv2.INTER_AREA) for f in decoded]
    else:
        rng = np.random.default_rng(0)
        base = cv2.resize(rng.integers(0, 256, (size[1] // 8, size[0] // 8 + count, 3),
                                       dtype=np.uint8), (size[0] + 8 * count, size[1]))
        frames = [base[:, 8 * i:8 * i + size[0]] for i in range(count)]
    frames = np.stack(frames)
    if grey:
        frames = np.repeat(cv2.cvtColor(frames.reshape(-1, size[0], 3), cv2.COLOR_RGB2GRAY)
                           .reshape(count, size[1], size[0], 1), 3, axis=-1)
    return frames


def clip(frames: np.ndarray, params: dict):
    from services.stagekit.stage import ClipInfo
    return ClipInfo("bench", frames.shape[2], frames.shape[1], Fraction(TAPE_FPS),
                    params=params, frame_count=len(frames))


# --- one model, in its own process ------------------------------------------------------------

def make_stage(model: str, store: Path, device: str, precision: str):
    import importlib
    made = importlib.import_module(f"services.{model}.stage").create_stage(
        weights=store / model, device=device, precision=precision)
    stages = made if isinstance(made, list) else [made]
    return next(s for s in stages if s.model == INPUTS[model][0])


def run_stage(stage, frames: np.ndarray, params: dict, device) -> tuple[list, float, int]:
    """The stage's output frames, the seconds they took and the peak memory (bytes: CUDA
    allocations on a GPU, else the process's resident set)."""
    import torch
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = list(stage.run(clip(frames, params), iter(frames))[1])
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return out, seconds, peak


def errors(out: list, reference: list) -> dict:
    diff = np.abs(np.stack(out).astype(np.float32) - np.stack(reference).astype(np.float32))
    return {"max_levels": round(float(diff.max()), 2), "mean_levels": round(float(diff.mean()), 4)}


def measure(model: str, store: Path, device: str, count: int, precisions: list[str],
            warmup: bool) -> list[dict]:
    """Rows for ``model``: one per precision (the first is the reference for errors)."""
    import torch
    from services.stagekit import randomweights
    from services.stagekit.weights import weights_present
    if not weights_present(model, store):
        randomweights.install(model, store)
    _, size, params = INPUTS[model]
    frames = input_frames(count, size, grey=model == "tcvc")
    rows, reference = [], None
    for precision in precisions:
        try:
            stage = make_stage(model, store, device, precision)
        except ValueError as exc:       # fp16 on a CPU
            rows.append({"model": model, "precision": precision, "skipped": str(exc)})
            continue
        if warmup:
            run_stage(stage, frames[:2], params, device)
        out, seconds, peak = run_stage(stage, frames, params, device)
        row = {"model": model, "precision": precision, "size": "%dx%d" % size,
               "frames_in": len(frames), "frames_out": len(out),
               "s_per_frame": seconds / max(1, len(out)), "fps": len(out) / seconds,
               "peak_mb": peak / 2**20, "fps_factor": stage.fps_factor}
        if reference is None:
            reference = out
        else:
            row.update(errors(out, reference))
        rows.append(row)
        del stage, out
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows


def measure_psrt_chunks(store: Path, device: str, count: int, chunk: int,
                        overlaps: list[int], size: tuple[int, int] = WORKING) -> list[dict]:
    """PSRT over ``count`` frames in one pass, then in chunks of ``chunk`` frames with each
    of ``overlaps``: the error chunking adds, and each run's time."""
    from services.stagekit import randomweights
    from services.stagekit.weights import weights_present
    if not weights_present("psrt", store):
        randomweights.install("psrt", store)
    frames = input_frames(count, size)
    stage = make_stage("psrt", store, device, "fp32")
    whole, seconds, peak = run_stage(stage, frames, {"chunk": str(count), "overlap": "0"}, device)
    rows = [{"model": "psrt", "chunking": f"{size[0]}x{size[1]} one pass of {count}",
             "s_per_frame": seconds / count,
             "peak_mb": peak / 2**20}]
    for overlap in overlaps:
        out, seconds, peak = run_stage(stage, frames, {"chunk": str(chunk), "overlap": str(overlap)},
                                       device)
        rows.append({"model": "psrt", "chunking": f"{size[0]}x{size[1]} chunk {chunk} overlap {overlap}",
                     "s_per_frame": seconds / count, "peak_mb": peak / 2**20, **errors(out, whole)})
    return rows


def child(args) -> int:
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.psrt_chunks:
        size = tuple(int(v) for v in args.chunk_size.split("x"))
        rows = measure_psrt_chunks(args.store, args.device, args.chunk_frames, args.chunk,
                                   [int(v) for v in args.overlaps.split(",")], size)
    else:
        rows = measure(args.child, args.store, args.device, args.frames,
                       args.precisions.split(","), warmup=torch.device(args.device).type == "cuda")
    print("ROWS " + json.dumps(rows), flush=True)
    return 0


# --- the table -------------------------------------------------------------------------------

def in_child(argv: list[str], timeout: float | None) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    try:
        done = subprocess.run([sys.executable, "-m", "bench.neural", *argv], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [{"model": argv[1], "skipped": f"over {timeout:.0f} s"}]
    lines = [l for l in done.stdout.splitlines() if l.startswith("ROWS ")]
    if done.returncode or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return [{"model": argv[1], "skipped": f"failed: {last[:200]}"}]
    return json.loads(lines[-1][5:])


def hours_per_hour(row: dict, fps: float) -> float:
    """Hours of this machine per hour of tape: output frames per hour times s/frame."""
    return row["s_per_frame"] * 3600 * fps * row["fps_factor"] / 3600


def table(rows: list[dict], fps: float) -> list[str]:
    lines = [f"{'model':<11} {'prec':<5} {'size':<9} {'frames':>6} {'s/frame':>9} {'frames/s':>9} "
             f"{'peak MB':>8} {'h per h of tape':>15} {'max err':>8} {'mean err':>9}"]
    total = 0.0
    for row in rows:
        if "skipped" in row:
            lines.append(f"{row['model']:<11} {row.get('precision', ''):<5} skipped: {row['skipped']}")
            continue
        per_hour = hours_per_hour(row, fps)
        if row["precision"] == "fp32":
            total += per_hour
        lines.append(f"{row['model']:<11} {row['precision']:<5} {row['size']:<9} "
                     f"{row['frames_out']:>6} {row['s_per_frame']:>9.3f} {row['fps']:>9.3f} "
                     f"{row['peak_mb']:>8.0f} {per_hour:>15.1f} "
                     f"{row.get('max_levels', ''):>8} {row.get('mean_levels', ''):>9}")
    lines.append(f"{'chain':<11} {'fp32':<5} {'':<9} {'':>6} {'':>9} {'':>9} {'':>8} "
                 f"{total:>15.1f}   (= {total / 24:.1f} days per hour of tape)")
    return lines


def chunk_table(rows: list[dict]) -> list[str]:
    lines = [f"{'psrt':<34} {'s/frame':>9} {'peak MB':>8} {'max err':>8} {'mean err':>9}"]
    for row in rows:
        if "skipped" in row:
            lines.append(f"psrt chunking skipped: {row['skipped']}")
            continue
        lines.append(f"{row['chunking']:<34} {row['s_per_frame']:>9.3f} {row['peak_mb']:>8.0f} "
                     f"{row.get('max_levels', ''):>8} {row.get('mean_levels', ''):>9}")
    return lines


def parse(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.neural", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, chain order")
    parser.add_argument("--frames", type=int, default=None,
                        help="input frames per model (default 3 on the CPU, 16 on CUDA)")
    parser.add_argument("--precisions", default=None,
                        help="comma-separated, fp32 first (default fp32 on the CPU, "
                             "fp32,fp16,bf16 on CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU default 2)")
    parser.add_argument("--fps", type=float, default=TAPE_FPS,
                        help="frames per second of tape entering the chain (default 29.97)")
    parser.add_argument("--psrt-chunks", action="store_true",
                        help="measure PSRT's chunking against one pass (default on CUDA)")
    parser.add_argument("--chunk-frames", type=int, default=None,
                        help="frames for the chunking rows (default 48 on CUDA, 40 on the CPU)")
    parser.add_argument("--chunk", type=int, default=None, help="chunk length (default 32)")
    parser.add_argument("--overlaps", default=None, help="overlaps to try (default 4,8,16)")
    parser.add_argument("--chunk-size", default=None, metavar="WxH",
                        help="frame size for the chunking rows (default 360x240; 96x64 on the CPU)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per model at most")
    parser.add_argument("--store", type=Path, default=None,
                        help="weights store to use or fill (default: a temporary one)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    cuda = args.device.startswith("cuda")
    args.frames = args.frames or (16 if cuda else 3)
    args.precisions = args.precisions or ("fp32,fp16,bf16" if cuda else "fp32")
    args.threads = args.threads or (None if cuda else 2)
    args.chunk_frames = args.chunk_frames or (48 if cuda else 40)
    args.chunk = args.chunk or 32
    args.overlaps = args.overlaps or "4,8,16"
    args.chunk_size = args.chunk_size or ("360x240" if cuda else "96x64")
    if args.child:
        return child(args)
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in INPUTS]
    if unknown:
        print(f"error: unknown model {unknown[0]!r} (models: {', '.join(MODELS)})", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-neural-") as scratch:
        store = args.store or Path(scratch)
        common = ["--store", str(store), "--device", args.device, "--frames", str(args.frames),
                  "--precisions", args.precisions] + (["--threads", str(args.threads)]
                                                      if args.threads else [])
        started = time.monotonic()
        print(_machine(args), flush=True)
        rows = []
        for model in models:
            rows += in_child(["--child", model, *common], args.timeout)
            print(f"  {model}: done at {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        print("\n".join(table(rows, args.fps)), flush=True)
        if (args.psrt_chunks or cuda) and "psrt" in models:
            chunks = in_child(["--child", "psrt", "--psrt-chunks", "--chunk-frames",
                               str(args.chunk_frames), "--chunk", str(args.chunk), "--overlaps",
                               args.overlaps, "--chunk-size", args.chunk_size, *common],
                              args.timeout)
            print("\n".join(chunk_table(chunks)))
        print(f"total {time.monotonic() - started:.0f} s (weights built and models loaded "
              f"included); hours per hour of tape at {args.fps:.2f} frames/s in")
    return 0


def _machine(args) -> str:
    import torch
    if args.device.startswith("cuda") and torch.cuda.is_available():
        return f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return (f"device: CPU, {os.cpu_count()} cores, {args.threads} torch threads, "
            f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    sys.exit(main())
