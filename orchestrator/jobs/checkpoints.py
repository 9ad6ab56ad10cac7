"""Clip checkpoints: each finished clip of a run, kept as its encoded segment of the output
(``pipeline/segments.py``), so an interrupted run resumes at its first unfinished clip.

The job service keeps them in its store and deletes them once the output is written; an
embedded run keeps them beside its output, in a hidden folder that its next run of the same
job resumes from, and deletes them once the output is written.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil

from .. import media
from ..errors import UserError
from ..media.shots import SCAN_SIZE
from ..pipeline.segments import ClipSegments

log = logging.getLogger("restoration.orchestrator")

ClipCheckpoints = ClipSegments


class EmbeddedCheckpoints(ClipSegments):
    """An embedded run's finished clips, beside its output until the output is written."""

    def resume_hint(self) -> str:
        return (f"{len(self.done())} finished clip(s) kept in {self.folder}; run the same "
                "command again to resume (--restart to start over)")


def embedded_checkpoints(plan, output: media.OutputSpec, resume: bool = False,
                         restart: bool = False) -> EmbeddedCheckpoints:
    """The checkpoint folder of this output. What an interrupted run of the same job left is
    resumed (``restart`` discards it). Finished clips of a different job (other input,
    stages or settings) are never reused and never deleted unasked: the run refuses."""
    folder = output.path.with_name(f".{output.path.name}.clips")
    identity = _identity(plan, output)
    stamp = folder / "job.json"
    if folder.exists():
        kept = EmbeddedCheckpoints(folder).done()
        same = stamp.exists() and json.loads(stamp.read_text()).get("identity") == identity
        if restart or not kept:
            shutil.rmtree(folder)
        elif not same:
            raise UserError(f"{folder} holds {len(kept)} finished clip(s) of a different run "
                            "(input, stages or settings changed): --restart discards them")
        else:
            log.info("resuming: %d finished clip(s) kept (--restart to start over)", len(kept))
    elif resume:
        log.info("nothing to resume: no checkpoints at %s", folder)
    checkpoints = EmbeddedCheckpoints(folder)
    stamp.write_text(json.dumps({"identity": identity}))
    return checkpoints


def _identity(plan, output: media.OutputSpec) -> str:
    src = plan.source.path.stat()
    # The shot scan's size stands for how clips are cut: another cut, other clips.
    text = json.dumps([str(plan.source.path.resolve()), src.st_size, src.st_mtime_ns,
                       plan.decisions(), [s.describe() for s in plan.stages], output.codec, output.crf,
                       output.path.suffix.lower(), list(SCAN_SIZE)])
    return hashlib.sha256(text.encode()).hexdigest()
