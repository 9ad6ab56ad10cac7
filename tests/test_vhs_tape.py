"""Issue 28, acceptance 3: with TAPE selected (`--model analog=tape`) the VHS damage reaches
TAPE as it is on the tape. The classical VHS repairs live in the classical analog model,
which TAPE replaces: nothing mends the chroma delay, dropouts or jitter before TAPE sees
them (TAPE is trained on tape damage; bench/quality.py's VHS rows compare the two)."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from orchestrator import media
from orchestrator.media.simulate import read_clip, simulate, write_clip
from orchestrator.pipeline import registry
from orchestrator.pipeline import specs as pipeline
from orchestrator.pipeline.plan import make_plan
from orchestrator.pipeline.runner import Job
from services.classical.analog import AnalogStage
from services.stagekit.stage import ClipInfo, Stage
from services.stagekit.testing import shared_dir

DAMAGE = ["chroma_delay", "tape_dropouts", "line_jitter"]
SEED = 5


class TapeStandIn(Stage):
    """Where TAPE's networks would run (no weights here): keeps what it is handed."""
    task, model = "analog", "tape"

    def __init__(self):
        self.received: list[np.ndarray] = []

    def process(self, info, frames):
        for frame in frames:
            self.received.append(frame.copy())
            yield frame


@pytest.fixture(scope="module")
def damaged_tape(tmp_path_factory):
    path = shared_dir() / "footage" / "cockatoo_clean.mp4"
    if not path.exists():
        pytest.skip(f"no {path}")
    clean, _ = read_clip(path, (240, 160), 5, 200)
    tape = tmp_path_factory.mktemp("vhs") / "vhs.mp4"
    write_clip(tape, simulate(clean, DAMAGE, SEED).frames, Fraction(25))
    return tape


def test_with_tape_selected_the_vhs_damage_reaches_tape_unrepaired(damaged_tape, tmp_path,
                                                                   monkeypatch):
    stand_in = TapeStandIn()
    monkeypatch.setattr(registry, "create_local",
                        lambda task, model, device="auto", precision=None: stand_in)
    source = media.probe(damaged_tape)
    plan = make_plan(source, pipeline.build(stages="analog", models=["analog=tape"]),
                     native="full", refuse=False)
    job = Job(plan, media.OutputSpec(tmp_path / "out.mkv", "ffv1"), show_progress=False)
    assert [step.name for step in job.steps] == ["analog/tape"]
    job.run()
    as_decoded, _ = read_clip(damaged_tape)
    assert len(stand_in.received) == len(as_decoded)
    assert all(np.array_equal(got, decoded)
               for got, decoded in zip(stand_in.received, as_decoded))
    # What the classical analog model would have handed on instead: the same frames mended.
    info = ClipInfo("vhs", source.width, source.height, source.fps,
                    params={"deflicker": "off"})
    mended = list(AnalogStage().run(info, iter(as_decoded))[1])
    assert not any(np.array_equal(got, fixed) for got, fixed in zip(stand_in.received, mended))
