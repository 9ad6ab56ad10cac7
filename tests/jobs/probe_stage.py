"""A stage service for the job tests: `python -m tests.jobs.probe_stage --listen HOST:PORT`.

It inverts the frames (so its work shows in the output), logs each clip it starts to
$PROBE_LOG (which clips were processed, how often), takes $PROBE_DELAY seconds a frame
(so a test can act in the middle of a job), and fails every request for the clips named
in $PROBE_FAIL ('all' for every clip)."""
from __future__ import annotations

import os
import time

from services.stagekit import Stage
from services.stagekit.server import main


class ProbeStage(Stage):
    task = "denoise"
    model = "probe"

    def process(self, info, frames):
        log = os.environ.get("PROBE_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"{info.clip_id} {os.getpid()}\n")
        failing = os.environ.get("PROBE_FAIL", "")
        if failing == "all" or info.clip_id in failing.split(","):
            raise RuntimeError(f"probe lamp blew on {info.clip_id}")
        delay = float(os.environ.get("PROBE_DELAY", "0"))
        for frame in frames:
            time.sleep(delay)
            yield 255 - frame


def create_stage(**_):
    return ProbeStage()


if __name__ == "__main__":
    main(create_stage)
