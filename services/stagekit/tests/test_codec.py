"""Clip headers survive the wire with everything the orchestrator's analysis put in them."""
from fractions import Fraction

import numpy as np
import pytest

from services.stagekit import codec
from services.stagekit.stage import ClipInfo, StageError


def test_analysis_findings_travel_in_the_header_both_ways():
    info = ClipInfo(clip_id="c1", width=4, height=2, fps=Fraction(30000, 1001),
                    analysis={"grey": b"1", "field_order": b"tff", "mask": bytes(range(256))})
    frames = [np.full((2, 4, 3), i, np.uint8) for i in range(3)]
    _, back, decoded = codec.decode_clip(iter(codec.encode_clip(info, frames, batch=2)))
    assert dict(back.analysis) == dict(info.analysis)
    assert [f[0, 0, 0] for f in decoded] == [0, 1, 2]


def test_a_header_with_too_many_findings_is_refused():
    info = ClipInfo(clip_id="c1", width=4, height=2, fps=Fraction(25),
                    analysis={f"k{i}": b"" for i in range(codec.MAX_ANALYSIS_ENTRIES + 1)})
    with pytest.raises(StageError, match="analysis entries"):
        codec.header_info(codec.header_message(info).header)
