"""Media I/O: what the decoder carries and normalises (rotation, variable frame rate,
10-bit, sample aspect ratio) and what the encoder writes (codecs, audio)."""
from __future__ import annotations

import subprocess
from fractions import Fraction

import av
import numpy as np
import pytest

from orchestrator import media

from .helpers import read_frames, textured, write_video


def ffmpeg() -> str:
    import imageio_ffmpeg
    return imageio_ffmpeg.get_ffmpeg_exe()


def test_rotation_is_applied_and_the_frame_stands_upright(tmp_path):
    frames = textured(1, size=(64, 48), count=4)
    plain = write_video(tmp_path / "plain.mp4", frames)
    turned = tmp_path / "turned.mp4"
    # Display matrix: show the stored frames turned 90 degrees counter-clockwise.
    subprocess.run([ffmpeg(), "-v", "error", "-display_rotation", "90", "-i", str(plain),
                    "-c", "copy", str(turned)], check=True)
    info = media.probe(turned)
    assert (info.width, info.height, info.rotation) == (48, 64, 90)
    decoded = list(media.decode(info))
    assert decoded[0].shape == (64, 48, 3)
    stored = read_frames(plain)[0].astype(np.int16)
    np.testing.assert_allclose(decoded[0], np.rot90(stored, 1), atol=2)


def test_variable_frame_rate_is_resampled_to_constant(tmp_path):
    path = tmp_path / "vfr.mkv"
    frames = textured(2, count=6)
    times_ms = [0, 40, 80, 200, 240, 280]  # a 120 ms gap: two frames missing at 25 fps
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv444p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for frame_rgb, ms in zip(frames, times_ms):
            frame = av.VideoFrame.from_ndarray(frame_rgb, format="rgb24")
            frame.pts, frame.time_base = ms, Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    info = media.probe(path)
    decoded = list(media.decode(info))
    assert len(decoded) == 8  # 0..280 ms at 25 fps
    np.testing.assert_array_equal(decoded[3], decoded[2])  # the gap holds the last frame
    np.testing.assert_array_equal(decoded[4], decoded[2])


def test_ten_bit_input_decodes(tmp_path):
    frames = textured(3, count=3)
    path = write_video(tmp_path / "ten.mkv", frames, codec="libx264",
                       options={"crf": "0"}, pix_fmt="yuv420p10le")
    info = media.probe(path)
    assert info.pix_fmt.startswith("yuv420p10")
    decoded = list(media.decode(info))
    assert len(decoded) == 3 and decoded[0].dtype == np.uint8
    assert np.abs(decoded[0].astype(int) - frames[0]).mean() < 6  # 4:2:0 chroma on a busy texture


@pytest.mark.parametrize("codec,suffix", [("h264", ".mp4"), ("h265", ".mkv"), ("ffv1", ".mkv")])
def test_writer_codecs_keep_size_rate_aspect_and_audio(tmp_path, codec, suffix):
    source_path = write_video(tmp_path / "src.mp4", textured(4, count=24), audio_seconds=1.0)
    source = media.probe(source_path)
    spec = media.OutputSpec(tmp_path / f"out{suffix}", codec, 20)
    spec.check()
    writer = media.VideoWriter(spec, 64, 48, Fraction(48), Fraction(8, 9), source)
    for frame in textured(5, count=48):
        writer.write(frame)
    writer.finish()
    with av.open(str(spec.path)) as container:
        video = container.streams.video[0]
        assert video.average_rate == 48
        if codec != "ffv1":  # known limit: PyAV's Matroska muxer drops it for FFV1 (warned)
            assert (video.sample_aspect_ratio or video.codec_context.sample_aspect_ratio) == Fraction(8, 9)
        assert container.streams.audio, "the source's audio is muxed in"
    assert len(read_frames(spec.path)) == 48
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_ffv1_needs_matroska(tmp_path):
    with pytest.raises(media.MediaError, match="mkv"):
        media.OutputSpec(tmp_path / "x.mp4", "ffv1").check()


@pytest.mark.parametrize("variable", [False, True])
def test_frames_at_gives_the_decoded_frames_by_seeking(tmp_path, variable):
    """The analysis reads only its few reference frames whole: each must be the frame the
    job's own decode gives at that index, whether reached by seeking (keyframes every 12
    frames, positions more than SEEK_GAP_S apart) or by decoding on."""
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 255, (32, 48, 3), dtype=np.uint8) for _ in range(160)]
    options = {"crf": "10", "g": "12"}
    path = write_video(tmp_path / "clip.mp4", frames, fps=Fraction(24), options=options)
    if variable:   # every third frame dropped: decode repeats the one before
        path = tmp_path / "vfr.mkv"
        subprocess.run([ffmpeg(), "-v", "error", "-i", str(tmp_path / "clip.mp4"), "-vf",
                        "select='not(eq(mod(n\\,3)\\,2))'", "-fps_mode", "vfr", "-c:v",
                        "libx264", "-crf", "10", "-g", "12", str(path)], check=True)
    info = media.probe(path)
    decoded = list(media.decode(info))
    wanted = [0, 5, 6, 70, 71, 150, len(decoded) - 1, len(decoded) + 5]
    found = media.frames_at(info, wanted)
    assert sorted(found) == sorted(i for i in wanted if i < len(decoded))
    for index, frame in found.items():
        assert np.array_equal(frame, decoded[index]), index
