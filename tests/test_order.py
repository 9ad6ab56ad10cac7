"""The order of the stages: every order bench/order.py measures runs through the pipeline
(no stage relies on a predecessor it did not declare), and an order that breaks a hard
constraint is refused with one line before any work."""
from __future__ import annotations

import itertools
from fractions import Fraction

import cv2
import pytest

from bench import order as bench
from orchestrator import media
from orchestrator.errors import UserError
from orchestrator.media import simulate
from orchestrator.pipeline import registry, specs
from tests.helpers import run_cli

SIZE = (64, 48)
FRAMES = 6


@pytest.fixture(scope="module")
def tape(tmp_path_factory):
    """A tiny damaged clip (a grey stretch among colour frames, bands, grain) and a
    colour reference for colorize."""
    folder = tmp_path_factory.mktemp("order")
    clean = list(simulate.pan(simulate.demo_image(), FRAMES, SIZE))
    damaged = simulate.simulate(clean, bench.DAMAGE, seed=3)
    path = folder / "tape.mp4"
    simulate.write_clip(path, damaged.frames, Fraction(25))
    reference = folder / "reference.png"
    cv2.imwrite(str(reference), cv2.cvtColor(clean[0], cv2.COLOR_RGB2BGR))
    return path, reference


def measured_orders() -> list[tuple[str, ...]]:
    """The benchmark's first round (no pair taken as commuting, so every swap) and the
    whole orders it may build from them: each first round's swap combined with the next."""
    default = registry.TASKS
    orders = list(bench.phase_one(default, set()))
    swaps = bench.pairs(default)
    for (a, b), (c, d) in zip(swaps, swaps[1:]):
        orders.append(bench.swapped(bench.swapped(default, a, b), c, d))
    return list(dict.fromkeys(orders))


def test_every_order_keeping_the_rules_is_a_valid_pipeline():
    first = specs.ORDER_RULES.first
    assert registry.TASKS[:len(first)] == first
    rest = registry.TASKS[len(first):]
    for order in itertools.permutations(rest):
        built = specs.build(stages=",".join((*first, *order)))
        assert [s.task for s in built] == [*first, *order]


@pytest.mark.parametrize("order", measured_orders(), ids=bench.label)
def test_the_pipeline_runs_every_measured_order(tape, tmp_path, order):
    path, reference = tape
    classical = {task: registry.CLASSICAL for task in order}
    stats = bench.restore(path, order, classical, [reference], tmp_path / "out.mkv")
    with media.open_input(tmp_path / "out.mkv") as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (SIZE[0] * 4, SIZE[1] * 4)
    assert stats["frames_written"] == 2 * media.probe(path).frame_count


@pytest.mark.parametrize("stages", ["interpolate,analog", "denoise,analog,superres"])
def test_an_order_breaking_a_hard_constraint_is_refused_in_one_line(tape, tmp_path, stages):
    path, _ = tape
    out = tmp_path / "out.mp4"
    result = run_cli("submit", path, "-o", out, "--stages", stages, timeout=120)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: stage order: analog must come first")
    assert not out.exists()


def test_a_pipeline_file_is_held_to_the_same_rules(tmp_path):
    file = tmp_path / "pipeline.yaml"
    file.write_text("stages:\n  - task: superres\n  - task: analog\n")
    with pytest.raises(UserError, match="analog must come first"):
        specs.build(file=file)


def test_the_deployed_pipelines_run_the_default_order():
    from deploy.stack import VIDEO_TASKS
    assert VIDEO_TASKS == registry.TASKS


def test_the_rule_keeps_interpolation_last_unless_it_measured_better():
    """Interpolating at the tape's size is always cheaper: it wins the benchmark's rule only
    where it also restores better than every order that interpolates last."""
    default = registry.TASKS
    early = bench.swapped(default, "superres", "interpolate")
    slower = bench.swapped(default, "denoise", "superres")

    def results(early_psnr: float) -> dict:
        figures = {default: (21.0, 4.6), early: (early_psnr, 2.7), slower: (21.1, 8.8)}
        return {order: bench.Result(order, "", {"tape": bench.Run(psnr, 0.0, 0.0, 1.0, cpu, 0)})
                for order, (psnr, cpu) in figures.items()}

    assert bench.verdict(results(20.8), default)[0].order == default
    assert bench.verdict(results(21.2), default)[0].order == early
