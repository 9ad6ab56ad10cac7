"""The seven-model chain as a user with the weights runs it (slow): full-size checkpoints
with random weights in the authors' official layouts installed in a temporary weights
store, a few interlaced frames cut from tape_sim.mp4 (its black-and-white scene, so that
every model works; the centre quarter of the picture, so that TAPE and PSRT finish on two
CPU cores), restored embedded and through the seven model services started as
processes. Output geometry, frame rate, frame count and audio are checked as for the
classical chain, and the analog model (TAPE) must receive progressive frames at the field
rate and the working size."""
from __future__ import annotations

import contextlib
import itertools
import time
from fractions import Fraction

import pytest

from orchestrator import media
from orchestrator.media.simulate import write_tape
from orchestrator.pipeline import specs as pipeline
from orchestrator.pipeline.plan import make_plan
from orchestrator.pipeline.runner import Job
from services.stagekit import randomweights
from services.stagekit.testing import running_service, shared_dir

from .test_e2e import audio_duration, video_facts

# Minutes a test on a 2-core machine, the weights' install (3 minutes) included: TAPE and PSRT
# take most of it. The whole picture (360x240 working size) took over 40 minutes in TAPE.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

FRAMES = 3                    # interlaced frames: six fields
AT = 4.0                      # seconds into tape_sim.mp4: its black-and-white scene
# The centre 360x240 of the 720x480 capture: even offsets keep each line in its field, and
# the working size is the tape's real 2:1 detail, 180x120, output 720x480 after PSRT's 4x.
CROP = (slice(120, 360), slice(180, 540))
NATIVE = (180, 120)
TASKS = {"tape": "analog", "propainter": "outpaint", "tcvc": "colorize", "mmprnn": "deblur",
         "rvrt": "denoise", "psrt": "superres", "sfadacof": "interpolate"}
# A tape is at the output rate once deinterlaced (interpolation would pass it through):
# SF-AdaCoF is made to work by doubling the field rate.
FACTOR = 2


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    clock = time.monotonic()
    randomweights.install_models(root, tuple(TASKS))
    print(f"\nfull-size random weights installed in {time.monotonic() - clock:.0f} s")
    return root


@pytest.fixture(scope="module")
def tape(tmp_path_factory):
    """FRAMES interlaced frames of tape_sim.mp4's centre (top field first, SAR 8:9), with
    audio."""
    footage = shared_dir() / "footage" / "tape_sim.mp4"
    if not footage.is_file():
        pytest.skip("../shared/footage is not available")
    source = media.probe(footage)
    start = round(AT * float(source.fps))
    frames = (f[CROP] for f in itertools.islice(media.decode(source), start, start + FRAMES))
    path = tmp_path_factory.mktemp("cut") / "tape.mp4"
    write_tape(path, frames, FRAMES / float(source.fps))
    return path


class Recording:
    """A step's runner that keeps the header of every clip it is given."""

    def __init__(self, runner):
        self.runner, self.headers = runner, []

    def run(self, info, frames):
        self.headers.append(info)
        return self.runner.run(info, frames)


def restore(tape, out, endpoints: dict[str, str]):
    specs = pipeline.build(models=[f"{task}={model}" for model, task in TASKS.items()],
                           sets=[f"interpolate.factor={FACTOR}"],
                           endpoints=[f"{TASKS[m]}={e}" for m, e in endpoints.items()])
    plan = make_plan(media.probe(tape), specs, native="{}x{}".format(*NATIVE))
    job = Job(plan, media.OutputSpec(out, "h264"), device="cpu", show_progress=False)
    analog = next(s for s in job.steps if s.spec is not None and s.spec.task == "analog")
    analog.runner = recorder = Recording(analog.runner)
    clock = time.monotonic()
    job.run()
    return plan, recorder.headers, time.monotonic() - clock


def check(tape, out, plan, headers) -> None:
    source = media.probe(tape)
    assert source.field_order == "tff"
    assert [s.task for s in plan.stages][:2] == ["deinterlace", "analog"]
    assert {s.model for s in plan.stages if s.task != "deinterlace"} == set(TASKS)
    # TAPE got progressive frames: deinterlaced to the field rate, at the working size.
    [header] = headers
    assert header.analysis["field_order"] == b"progressive"
    assert header.fps == 2 * source.fps and (header.width, header.height) == NATIVE
    facts = video_facts(out)
    assert (facts["width"], facts["height"]) == (4 * NATIVE[0], 4 * NATIVE[1])
    dar = facts["sar"] * Fraction(facts["width"], facts["height"])
    assert abs(float(dar) / (4 / 3) - 1) <= 0.01
    assert facts["fps"] == FACTOR * 2 * source.fps
    assert facts["frames"] == FACTOR * 2 * FRAMES
    assert abs(facts["audio"] - audio_duration(tape)) <= 0.1


def test_the_seven_models_embedded(store, tape, tmp_path, monkeypatch):
    monkeypatch.setenv("RESTORATION_WEIGHTS", str(store))
    out = tmp_path / "embedded.mp4"
    plan, headers, seconds = restore(tape, out, {})
    print(f"\nseven models embedded: {FRAMES} interlaced frames in {seconds:.0f} s")
    check(tape, out, plan, headers)


def test_the_seven_models_as_services(store, tape, tmp_path):
    out = tmp_path / "served.mp4"
    with contextlib.ExitStack() as stack:
        endpoints = {model: "grpc://" + stack.enter_context(running_service(
            f"services.{model}", "--device", "cpu", env={"RESTORATION_WEIGHTS": str(store)},
            timeout=600)) for model in TASKS}
        plan, headers, seconds = restore(tape, out, endpoints)
    print(f"\nseven models as gRPC services: {FRAMES} interlaced frames in {seconds:.0f} s")
    check(tape, out, plan, headers)
