"""Issue 27: every flag and stage parameter is checked before any work (one `error:` line,
a non-zero exit, the input never opened), and the live progress bar fits the terminal."""
from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest

from .helpers import REPO, run_cli, textured, write_video

# The input does not exist: an error about anything but the flag would name the file.
CASES = [
    (["--skip", "colourize"], ["--skip", "unknown task 'colourize'", "did you mean 'colorize'"]),
    (["--stages", "analog,denoize"], ["--stages", "'denoize'", "did you mean 'denoise'"]),
    (["--model", "colourize=classical"], ["--model", "did you mean 'colorize'"]),
    (["--set", "colourize.reference=a.jpg"], ["--set", "did you mean 'colorize'"]),
    (["--crf", "99"], ["--crf 99", "0-51"]),
    (["--codec", "h265", "--crf", "-1"], ["--crf -1", "h265"]),
    (["--codec", "ffv1", "--crf", "10"], ["--crf", "ffv1", "lossless"]),
    (["--set", "denoise.strenght=3"],
     ["stage denoise/classical: unknown parameter 'strenght'", "did you mean 'strength'",
      "(known: strength)"]),
    (["--model", "deblur=mmprnn"],
     ["stage deblur/mmprnn: no weights", "orchestrator weights pull mmprnn"]),
]


def run_cli_without_weights(tmp_path: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "RESTORATION_WEIGHTS": str(tmp_path / "no-weights")}
    return subprocess.run([sys.executable, "-m", "orchestrator", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("flags,words", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_a_bad_flag_fails_before_any_work(tmp_path, flags, words):
    missing = tmp_path / "tape.mp4"
    started = time.monotonic()
    result = run_cli_without_weights(tmp_path, "submit", missing, *flags)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "stage denoise/classical: denoise/classical" not in lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    assert "tape.mp4" not in lines[0] and "internal" not in lines[0]
    assert time.monotonic() - started < 60
    assert not list(tmp_path.glob("*.restored.*"))


def test_inspect_and_preview_check_parameters_too(tmp_path):
    for command in ("inspect", "preview"):
        result = run_cli_without_weights(tmp_path, command, tmp_path / "tape.mp4",
                                         "--set", "analog.sise=360x240")
        assert result.returncode == 1
        assert result.stderr.startswith("error: stage analog/classical: unknown parameter 'sise'")
        assert "did you mean 'size'" in result.stderr


def test_an_unreachable_job_service_is_named_in_words(tmp_path):
    from services.stagekit.testing import free_port
    address = f"127.0.0.1:{free_port()}"
    result = run_cli("status", "job1", "--server", address, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: cannot reach the job service at {address}"


# ---- the progress bar on a terminal ------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_on_terminal(args: list[str], columns: int, timeout: float = 120) -> tuple[int, str]:
    """The CLI with its output on a pseudo-terminal ``columns`` wide: (exit code, output)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, columns, 0, 0))
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "xterm"}
    process = subprocess.Popen([sys.executable, "-m", "orchestrator", *args], cwd=REPO,
                               stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    output, end = b"", time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            output += data
        elif process.poll() is not None:
            break
    process.wait(timeout=30)
    os.close(master)
    return process.returncode, output.decode(errors="replace")


@pytest.fixture(scope="module")
def two_shot_clip(tmp_path_factory) -> Path:
    """Two shots (a hard cut from a grey texture to a red one), 1.5 s at 24 fps."""
    folder = tmp_path_factory.mktemp("shots")
    red = np.array([1.0, 0.25, 0.2], np.float32)
    frames = textured(1, (96, 64), 18) + [(f * red).astype(np.uint8) for f in textured(2, (96, 64), 18)]
    return write_video(folder / "two shots.mp4", frames)


@pytest.mark.parametrize("columns", [60, 200])
def test_progress_bar_fits_the_terminal_and_keeps_logs_apart(two_shot_clip, tmp_path, columns):
    out = tmp_path / "out.mp4"
    code, text = run_on_terminal(["submit", str(two_shot_clip), "-o", str(out), "-y",
                                  "--stages", "denoise,superres"], columns)
    assert code == 0, text
    screens = [ANSI.sub("", part) for line in text.split("\n") for part in line.split("\r")]
    bars = [s for s in screens if "|" in s and "%" in s and "ETA" in s]
    assert bars, text
    for bar in bars:
        assert len(bar.rstrip()) <= columns, bar
        assert re.match(r"^\s*\d+% ETA \S+ \|", bar), bar
    # The clip total never changes: it comes from the shot scan made before the work.
    totals = {m for bar in bars for m in re.findall(r"clip \d+/(\d+)", bar)}
    assert totals == {"2"}, totals
    # Log lines stand on their own, never glued to a bar.
    logs = [s for s in screens if s.startswith(("input:", "stages:", "working resolution"))]
    assert len(logs) == 3, screens
    assert out.exists()


def test_an_unreachable_stage_service_is_named_in_words(tmp_path):
    from services.stagekit.testing import free_port
    endpoint = f"grpc://127.0.0.1:{free_port()}"
    tape = write_video(tmp_path / "tape.mp4", textured(3, (64, 48), 4))
    result = run_cli("submit", tape, "--stages", "denoise", "--endpoint", f"denoise={endpoint}",
                     timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: stage denoise: cannot reach {endpoint} "
                                     "(no answer: connection refused)")
