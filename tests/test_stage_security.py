"""A stage service with a token and a frame-size limit (issue 34): a clip over the limit is
refused from its header, before its frames arrive; callers without the token and clips
naming files outside the service's input roots are refused; the service keeps serving and
the orchestrator reaches it with $RESTORATION_STAGE_TOKEN."""
from __future__ import annotations

import numpy as np
import pytest

from services.stagekit import StageError
from services.stagekit.client import StageClient
from services.stagekit.testing import clip_info, running_service

from .helpers import read_frames, run_cli, textured, write_video

TOKEN = "stage-test-token"


@pytest.fixture(scope="module")
def stage():
    with running_service("services.classical", "--max-frame-pixels", "1000000",
                         "--token", TOKEN) as address:
        yield address


def test_frames_over_the_pixel_limit_are_refused_and_the_service_keeps_serving(stage, monkeypatch):
    monkeypatch.setenv("RESTORATION_STAGE_TOKEN", TOKEN)
    big = [np.zeros((2000, 2000, 3), np.uint8)]
    small = textured(3, (32, 24), 2)
    with StageClient(stage, timeout=60) as client:
        with pytest.raises(StageError, match="over this service's limit of 1000000 pixels"):
            out_info, frames = client.process(clip_info(big), big, task="superres")
            list(frames)
        out_info, frames = client.process(clip_info(small), small, task="superres")
        assert [f.shape for f in frames] == [(96, 128, 3)] * 2


def test_a_caller_without_the_token_is_refused(stage, monkeypatch):
    import grpc
    monkeypatch.delenv("RESTORATION_STAGE_TOKEN", raising=False)
    small = textured(3, (32, 24), 2)
    with StageClient(stage, timeout=60) as client, pytest.raises(grpc.RpcError) as caught:
        client.describe()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    monkeypatch.setenv("RESTORATION_STAGE_TOKEN", "wrong")
    with StageClient(stage, timeout=60) as client, pytest.raises(grpc.RpcError) as caught:
        list(client.process(clip_info(small), small, task="denoise")[1])
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_clip_may_not_name_files_on_the_service_host(stage, monkeypatch, tmp_path):
    monkeypatch.setenv("RESTORATION_STAGE_TOKEN", TOKEN)
    (tmp_path / "photo.png").write_bytes(b"not read")
    small = textured(3, (32, 24), 2)
    answers = set()
    with StageClient(stage, timeout=60) as client:
        for name in ("photo.png", "missing.png"):
            info = clip_info(small, reference=str(tmp_path / name))
            with pytest.raises(StageError) as caught:
                list(client.process(info, small, task="colorize")[1])
            answers.add(str(caught.value))
    assert answers == {"reference: not allowed (this service reads files only inside its "
                       "--input-root)"}


def test_the_orchestrator_sends_the_stage_token(stage, tmp_path, monkeypatch):
    tape = write_video(tmp_path / "tape.mp4", textured(5, (48, 32), 4))
    out = tmp_path / "out.mkv"
    monkeypatch.setenv("RESTORATION_STAGE_TOKEN", TOKEN)
    done = run_cli("submit", tape, "-o", out, "--codec", "ffv1", "--native", "full", "-q",
                   "--stages", "denoise", "--endpoint", f"denoise=grpc://{stage}", timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(read_frames(out)) == 4
