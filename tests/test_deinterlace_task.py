"""`deinterlace` is a task of its own, first, kept for interlaced input alone: the field
order from the container unless the user says otherwise, and every model of `analog`
(TAPE too) then works on progressive frames at the field rate and the working size."""
from __future__ import annotations

import argparse

import pytest

from orchestrator import media
from orchestrator.errors import UserError
from orchestrator.media.simulate import make_demo_tape
from orchestrator.pipeline import memory, specs as pipeline
from orchestrator.pipeline.plan import make_plan
from orchestrator.pipeline.stagerunners import build_steps, frames_out

from .helpers import textured, write_video


@pytest.fixture(scope="module")
def tape(tmp_path_factory):
    """An interlaced capture (tff in the container), 0.2 s."""
    return media.probe(make_demo_tape(tmp_path_factory.mktemp("tape") / "tape.mp4", 0.2))


def flags(**given) -> argparse.Namespace:
    defaults = dict(pipeline=None, stages=None, skip=None, model=None, sets=None,
                    endpoint=None, field_order=None)
    return argparse.Namespace(**{**defaults, **given})


def plan_of(source, native="360x240", **given):
    return make_plan(source, pipeline.from_args(flags(**given), local=False), native=native)


def test_an_interlaced_tape_is_deinterlaced_first_whatever_models_run(tape):
    plan = plan_of(tape, model=["analog=tape"])
    assert [s.task for s in plan.stages][:2] == ["deinterlace", "analog"]
    assert plan.stages[1].model == "tape"
    assert plan.stages[0].params == {"field_order": "tff"}
    # The memory the plan counts on: TAPE at the working size, not the interlaced frame's.
    sizes = {spec.task: size for spec, size in memory._stage_inputs(plan)}
    assert sizes["deinterlace"] == (720, 480) and sizes["analog"] == (360, 240)


def test_the_stages_named_get_deinterlace_in_front_unless_it_is_skipped(tape):
    plan = plan_of(tape, stages="denoise")
    assert [s.task for s in plan.stages] == ["deinterlace", "denoise"]
    skipped = plan_of(tape, native="auto", stages="denoise", skip=["deinterlace"])
    assert [s.task for s in skipped.stages] == ["denoise"]
    # resampling interlaced frames would mix their fields: the frame size is kept
    assert skipped.working_size == (tape.width, tape.height)


def test_progressive_input_has_no_deinterlace_stage(tmp_path):
    source = media.probe(write_video(tmp_path / "film.mp4", textured(1, (64, 48), 4)))
    assert "deinterlace" not in [s.task for s in plan_of(source, native="full").stages]


@pytest.mark.parametrize("given,order,kept", [("bff", "bff", True), ("progressive", "progressive", False),
                                              ("auto", "tff", True)])
def test_the_field_order_flag_overrides_the_container(tape, given, order, kept):
    plan = plan_of(tape, field_order=given)
    assert plan.source.field_order == order
    assert ("deinterlace" in [s.task for s in plan.stages]) == kept
    if kept:
        assert plan.stages[0].params["field_order"] == order
    same = plan_of(tape, sets=[f"deinterlace.field_order={given}"])
    assert same.source.field_order == order


def test_a_bad_field_order_is_one_clear_error(tape):
    with pytest.raises(UserError, match="field order 'upper': expected one of auto, tff, bff, progressive"):
        plan_of(tape, field_order="upper")


def test_deinterlacing_doubles_the_frames_each_stage_hands_on(tape):
    plan = plan_of(tape, stages="denoise,interpolate")
    counts = frames_out(build_steps(plan, device="cpu"), plan)
    fields = 2 * tape.frame_count
    assert counts == {"deinterlace/classical": fields, "resample": fields,
                      "denoise/classical": fields, "interpolate/classical": fields}
