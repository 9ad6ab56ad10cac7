"""Bad input and unwritable output: a one-line error naming the problem, a non-zero exit,
no traceback, nothing left behind."""
from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest

from .helpers import add_tone_stream, refers_to, run_cli, textured, write_tone, write_video


def assert_clean_failure(result, out_dir: Path, *words: str) -> None:
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in errors[0], errors[0]
    leftovers = [p.name for p in out_dir.iterdir()
                 if p.is_file() and ("restored" in p.name or p.name.endswith(".part"))]
    assert leftovers == [], leftovers


def test_missing_input(tmp_path):
    result = run_cli("submit", tmp_path / "nope.mp4", "-o", tmp_path / "restored.mp4")
    assert_clean_failure(result, tmp_path, "no such file")


def test_folder_as_input(tmp_path):
    (tmp_path / "dir.mp4").mkdir()
    result = run_cli("submit", tmp_path / "dir.mp4", "-o", tmp_path / "restored.mp4")
    assert_clean_failure(result, tmp_path, "folder")


def test_empty_input(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    result = run_cli("submit", tmp_path / "empty.mp4", "-o", tmp_path / "restored.mp4")
    assert_clean_failure(result, tmp_path, "empty")


def test_text_file_is_not_a_video(tmp_path):
    (tmp_path / "notes.mp4").write_text("wedding, june 1994\n" * 50)
    result = run_cli("submit", tmp_path / "notes.mp4", "-o", tmp_path / "restored.mp4")
    assert_clean_failure(result, tmp_path, "not a video")


def test_still_image_is_not_a_video(tmp_path):
    path = tmp_path / "photo.png"
    frame = av.VideoFrame.from_ndarray(textured(1)[0], format="rgb24")
    with av.open(str(path), "w", format="image2") as out:
        stream = out.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "rgb24"
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    result = run_cli("submit", path, "-o", tmp_path / "restored.mp4")
    assert_clean_failure(result, tmp_path, "still image")


@pytest.mark.parametrize("kind, name, words", [
    ("hls", "tape.m3u8", ("HLS playlist",)), ("hls", "tape.mp4", ("HLS playlist",)),
    ("concat", "tape.ffconcat", ("concat list",)), ("concat", "tape.mkv", ("concat list",))])
def test_files_that_name_other_files_are_refused(tmp_path, kind, name, words):
    """A playlist or concat list would read any file it names (issue 34)."""
    other = write_video(tmp_path / "other.ts", textured(2, count=4))
    path = refers_to(tmp_path / name, other, kind)
    result = run_cli("submit", path, "-o", tmp_path / "restored.mp4")
    assert_clean_failure(result, tmp_path, *words)
    assert_clean_failure(run_cli("inspect", path), tmp_path, *words)


def test_audio_only_input(tmp_path):
    path = tmp_path / "voice.m4a"
    with av.open(str(path), "w") as out:
        write_tone(out, add_tone_stream(out), 1.0)
    result = run_cli("submit", path, "-o", tmp_path / "restored.mp4")
    assert_clean_failure(result, tmp_path, "no video stream")


def test_truncated_input_without_index(tmp_path):
    whole = write_video(tmp_path / "whole.mp4", textured(2, count=24))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    result = run_cli("submit", cut, "-o", tmp_path / "restored.mp4")
    assert_clean_failure(result, tmp_path, "cut.mp4")


def test_truncated_input_with_index_first(tmp_path):
    whole = write_video(tmp_path / "whole.mp4", textured(3, size=(128, 96), count=48),
                        container_options={"movflags": "faststart"})
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 5])
    result = run_cli("submit", cut, "-o", tmp_path / "restored.mp4")
    assert_clean_failure(result, tmp_path, "truncated")


@pytest.mark.parametrize("where", ["missing-folder", "a-folder", "proc"])
def test_unwritable_output(tmp_path, where):
    source = write_video(tmp_path / "in.mp4", textured(4))
    target = {"missing-folder": tmp_path / "no" / "such" / "restored.mp4",
              "a-folder": tmp_path / "restored.mp4",
              "proc": Path("/proc/restored.mp4")}[where]
    if where == "a-folder":
        target.mkdir()
    result = run_cli("submit", source, "-o", target)
    assert_clean_failure(result, tmp_path, "cannot write output")


def test_existing_output_is_kept_without_overwrite(tmp_path):
    source = write_video(tmp_path / "in.mp4", textured(5))
    target = tmp_path / "restored.mp4"
    target.write_bytes(b"precious")
    result = run_cli("submit", source, "-o", target)
    assert result.returncode != 0 and "already exists" in result.stderr
    assert target.read_bytes() == b"precious"


def test_unknown_task_and_model(tmp_path):
    source = write_video(tmp_path / "in.mp4", textured(6))
    result = run_cli("submit", source, "-o", tmp_path / "r.mp4", "--stages", "analog,sharpen")
    assert_clean_failure(result, tmp_path, "unknown task 'sharpen'")
    result = run_cli("submit", source, "-o", tmp_path / "r.mp4", "--model", "denoise=magic")
    assert_clean_failure(result, tmp_path, "no model 'magic'")
