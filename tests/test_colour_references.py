"""Grey scenes coloured from the tape's own colour shots (issue 25), on clips made here
from clean colour footage (../shared/footage/cockatoo_clean.mp4, stretches the benchmark
does not use): the chroma of the grey stretch against the truth, its flicker, colour
frames untouched, the user's references first, a saturated overlay kept, a tape grey
throughout left grey with a plain word why; the references in the header over gRPC and
through a whole job."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from bench.colour import (chroma_error, colour_as_a_job, colour_flicker, colourfulness,
                          grey_middle)
from orchestrator.commands.inspect import inspect, render
from orchestrator.media.references import scan
from orchestrator.pipeline.specs import build
from orchestrator.media.simulate import read_clip
from services.stagekit import ClipInfo, StageError
from services.stagekit.client import StageClient
from services.stagekit.monochrome import is_monochrome
from services.stagekit.testing import running_service

from .helpers import read_frames, run_cli, write_video


def cockatoo() -> Path:
    from services.stagekit.testing import shared_dir
    path = shared_dir() / "footage" / "cockatoo_clean.mp4"
    if not path.is_file():
        pytest.skip("../shared/footage is not available")
    return path

SIZE = (256, 144)
GREY = (12, 36)           # the grey stretch within each 48-frame clip


@pytest.fixture(scope="module", params=[100, 200], ids=["from100", "from200"])
def clip(request):
    clean, fps = read_clip(cockatoo(), SIZE, 48, request.param)
    return clean, grey_middle(clean, *GREY), fps


def test_grey_stretch_takes_its_colour_from_the_colour_shots_around_it(clip):
    clean, grey, fps = clip
    out = colour_as_a_job(grey, fps)
    assert len(out) == len(clean)
    # Colour frames are left as they were, bit for bit.
    assert all(np.array_equal(out[i], clean[i])
               for i in [*range(GREY[0]), *range(GREY[1], len(clean))])
    ours, left_grey = chroma_error(out, clean, *GREY), chroma_error(grey, clean, *GREY)
    assert ours <= 0.6 * left_grey, (ours, left_grey)
    assert colour_flicker(out, *GREY) <= colour_flicker(clean, *GREY) + 0.3


@pytest.mark.parametrize("photos", ["of the scene", "from elsewhere"])
def test_users_references_come_first_and_give_at_least_as_much_colour(clip, tmp_path, photos):
    """The user's colour photos: of the grey scene itself, or of the same day but other
    moments (frames well away from the clip); either way no less colour than without
    (the user's and the tape's references are chosen between, not averaged)."""
    clean, grey, fps = clip
    if photos == "of the scene":
        pictures = [clean[GREY[0] + 4], clean[GREY[1] - 6]]
    else:
        pictures, _ = read_clip(cockatoo(), SIZE, 2, 20)
    automatic = colour_as_a_job(grey, fps)
    users = colour_as_a_job(grey, fps, {"reference": saved(pictures, tmp_path)})
    # Used where they match (photos of the scene bring it closer to the truth), never
    # at the cost of colour where they do not.
    assert any(not np.array_equal(users[i], automatic[i]) for i in range(*GREY))
    if photos == "of the scene":
        assert chroma_error(users, clean, *GREY) < chroma_error(automatic, clean, *GREY)
    assert all(np.array_equal(users[i], clean[i])
               for i in [*range(GREY[0]), *range(GREY[1], len(clean))])
    assert at_least_as_colourful(users, automatic, *GREY)
    assert chroma_error(users, clean, *GREY) < 0.6 * chroma_error(grey, clean, *GREY)
    assert colour_flicker(users, *GREY) <= colour_flicker(clean, *GREY) + 0.3


def saved(pictures: list[np.ndarray], folder: Path) -> str:
    """The pictures as PNG files, in the form of colorize.reference."""
    paths = []
    for number, picture in enumerate(pictures):
        paths.append(folder / f"ref{number}.png")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    return ",".join(map(str, paths))


def at_least_as_colourful(users, automatic, start: int, stop: int) -> bool:
    """No less colour with the user's references than without."""
    return colourfulness(users, start, stop) >= colourfulness(automatic, start, stop)


@pytest.mark.slow
def test_on_the_tape_photos_of_other_moments_take_no_colour_away(tmp_path):
    """tape_sim.mp4 deinterlaced, its grey scene coloured with and without two frames of
    the clean twin from its colour scenes (1.0 s and 7.5 s) as the user's photos."""
    tape, analog = cockatoo().with_name("tape_sim.mp4"), tmp_path / "analog.mkv"
    result = run_cli("submit", tape, "-o", analog, "--stages", "analog", "--codec", "ffv1",
                     "--quiet", timeout=300)
    assert result.returncode == 0, result.stderr
    frames, rate = read_clip(analog)
    height, width = frames[0].shape[:2]
    twin, twin_rate = read_clip(cockatoo(), None, 160)
    pictures = [cv2.resize(twin[round(t * float(twin_rate))][:, 160:1120], (width, height),
                           interpolation=cv2.INTER_AREA) for t in (1.0, 7.5)]
    start, stop = next(s for s in scan(frames, float(rate)).shots if s[0] > 0)
    assert not is_monochrome(frames[start - 1]) and is_monochrome(frames[start])
    automatic = colour_as_a_job(frames, rate)
    users = colour_as_a_job(frames, rate, {"reference": saved(pictures, tmp_path)})
    assert at_least_as_colourful(users, automatic, start, stop)
    assert colour_flicker(users, start, stop) <= colour_flicker(automatic, start, stop) + 0.3


def stamped(frame: np.ndarray) -> np.ndarray:
    """A yellow date stamp with a dark outline, burned in at the bottom right."""
    out = frame.copy()
    at = (SIZE[0] - 110, SIZE[1] - 12)
    cv2.putText(out, "JAN 15 1994", at, cv2.FONT_HERSHEY_SIMPLEX, 0.4, (20, 20, 20), 3)
    cv2.putText(out, "JAN 15 1994", at, cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 220, 0), 1)
    return out


def test_a_saturated_overlay_in_a_grey_scene_keeps_its_colour(clip):
    clean, grey, fps = clip
    frames = [stamped(f) for f in grey]
    out = colour_as_a_job(frames, fps)
    for i in range(*GREY):
        ycc = cv2.cvtColor(frames[i], cv2.COLOR_RGB2YCrCb).astype(int)
        yellow = np.abs(ycc[..., 1:] - 128).max(axis=2) > 40
        assert yellow.sum() > 50
        # The stamp and its outline are as they were: still yellow, no halo, no spill.
        assert np.array_equal(out[i][yellow], frames[i][yellow])
        rim = cv2.dilate(yellow.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        assert np.array_equal(out[i][rim], frames[i][rim])
    # ... and the picture around it is coloured.
    truth = [stamped(f) for f in clean]
    assert chroma_error(out, truth, *GREY) < 0.6 * chroma_error(frames, truth, *GREY)


def test_a_tape_grey_throughout_stays_grey_and_says_what_to_do(tmp_path):
    clean, fps = read_clip(cockatoo(), (96, 64), 16, 150)
    grey = grey_middle(clean, 0, len(clean))
    found = scan(grey, float(fps))
    assert [s.references for s in found.scenes] == [[]]
    assert all(np.array_equal(a, b) for a, b in zip(colour_as_a_job(grey, fps), grey))
    path = write_video(tmp_path / "grey.mp4", grey, fps)
    words = render(inspect(path, build(stages="colorize", models=["colorize=classical"])))
    assert "stays grey" in words
    assert "colorize.reference" in words and "weights pull tcvc" in words


def test_references_travel_in_the_clip_header_over_grpc():
    clean, fps = read_clip(cockatoo(), SIZE, 48, 100)
    grey = grey_middle(clean, *GREY)
    found = scan(grey, float(fps))
    scene = found.scenes[0]
    frames = grey[scene.start:scene.stop]
    info = ClipInfo(scene.clip_id, SIZE[0], SIZE[1], fps,
                    references=found.references()[scene.clip_id])
    with running_service("services.classical") as address:
        with StageClient(address, timeout=120) as client:
            out_info, out = client.process(info, frames, task="colorize")
            remote = list(out)
            # A small file that would decode to gigapixels, or too many references: refused
            # from the header alone, and the service goes on serving.
            bomb = cv2.imencode(".png", np.zeros((5000, 5000, 3), np.uint8))[1].tobytes()
            for references in [(bomb,), info.references * 3]:
                with pytest.raises(StageError, match="limit|at most"):
                    list(client.process(info.replace(references=references), frames[:2],
                                        task="colorize")[1])
            assert len(list(client.process(info, frames[:2], task="colorize")[1])) == 2
    from services.classical.colorize import ColorizeStage
    _, local = ColorizeStage().run(info, iter(frames))
    assert out_info.references == ()
    assert all(np.array_equal(a, b) for a, b in zip(remote, local))
    assert chroma_error(remote, clean[scene.start:], 0, len(remote)) < \
        0.6 * chroma_error(frames, clean[scene.start:], 0, len(frames))


def test_a_job_colours_the_grey_scene_and_says_where_from(tmp_path):
    clean, fps = read_clip(cockatoo(), (192, 108), 36, 230)
    grey = grey_middle(clean, 10, 26)
    source = write_video(tmp_path / "tape.mp4", grey, fps, options={"crf": "4"})
    output = tmp_path / "out.mp4"
    result = run_cli("submit", source, "-o", output, "--stages", "colorize", "--native", "full",
                     "--quiet", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "colour from" in result.stderr and "colour shots" in result.stderr
    out = read_frames(output)
    assert chroma_error(out, clean, 10, 26) < 0.6 * chroma_error(grey, clean, 10, 26)


@pytest.mark.slow
def test_a_preview_of_a_grey_stretch_is_coloured_as_the_job_would(tmp_path, caplog):
    """The stretch alone holds no colour frame: its references come from the whole tape."""
    from orchestrator.commands.preview import preview
    tape = cockatoo().with_name("tape_sim.mp4")
    still = tmp_path / "compare.png"
    with caplog.at_level("INFO", logger="restoration.classical"):
        preview(tape, tmp_path / "compare.mp4", 4.0, 0.3, build(stages="colorize"), "full",
                "cpu", "side", still, show_progress=False)
    assert "colouring grey frames from 4 frame(s) of the tape's colour shots" in caplog.text
    image = cv2.cvtColor(cv2.imread(str(still)), cv2.COLOR_BGR2YCrCb).astype(float)
    upper = image[:image.shape[0] * 3 // 4]          # above the yellow date stamp
    half = upper.shape[1] // 2
    spread = lambda part: np.abs(part[..., 1:] - 128).mean()
    assert spread(upper[:, half:]) > spread(upper[:, :half]) + 0.05
