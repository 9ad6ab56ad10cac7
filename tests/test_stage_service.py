"""The classical stage service as a real process: describe, stream, reject bad requests
and keep serving."""
from __future__ import annotations

from fractions import Fraction

import grpc
import numpy as np
import pytest

from services.stagekit import ClipInfo, StageError, codec
from services.stagekit.client import StageClient
from services.stagekit.protos import stage_pb2 as pb
from services.stagekit.testing import running_service

from .helpers import textured

TASKS = {"deinterlace", "analog", "outpaint", "colorize", "deblur", "denoise", "superres", "interpolate"}


@pytest.fixture(scope="module")
def service():
    with running_service("services.classical") as address:
        with StageClient(address, timeout=120) as client:
            yield client


def clip_info(frames, **params) -> ClipInfo:
    h, w = frames[0].shape[:2]
    return ClipInfo("c0", width=w, height=h, fps=Fraction(24), params=params)


def test_describe_lists_every_task(service):
    described = service.describe()
    assert {d["task"] for d in described} == TASKS
    superres = next(d for d in described if d["task"] == "superres")
    assert superres["scale"] == 4 and superres["model"] == "classical"


def raw_process(client: StageClient, messages):
    return list(client.stub.Process(iter(messages), timeout=60))


def header(width=16, height=8, fmt=pb.RGB24, task="denoise"):
    return pb.ClipChunk(header=pb.ClipHeader(
        clip_id="bad", task=task, width=width, height=height, pixel_format=fmt,
        fps=pb.Rational(num=24, den=1)))


MALFORMED = {
    "wrong byte count": [header(), pb.ClipChunk(batch=pb.FrameBatch(count=1, data=b"\0" * 10)),
                         pb.ClipChunk(end=pb.ClipEnd(frame_count=1))],
    "unknown pixel format": [header(fmt=7), pb.ClipChunk(end=pb.ClipEnd())],
    "zero-size frames": [header(width=0), pb.ClipChunk(end=pb.ClipEnd())],
    "no header": [pb.ClipChunk(batch=pb.FrameBatch(count=1, data=b"\0" * 384))],
    "unknown task": [header(task="sharpen"), pb.ClipChunk(end=pb.ClipEnd())],
    "end count mismatch": [header(), pb.ClipChunk(batch=pb.FrameBatch(count=1, data=b"\0" * 384)),
                           pb.ClipChunk(end=pb.ClipEnd(frame_count=5))],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_request_is_invalid_argument_and_service_keeps_serving(service, case):
    with pytest.raises(grpc.RpcError) as err:
        raw_process(service, MALFORMED[case])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details()
    frames = textured(1, count=3)
    _, out = service.process(clip_info(frames), frames, task="denoise")
    assert len(list(out)) == 3


def test_bad_param_is_a_stage_error(service):
    frames = textured(2, count=2)
    with pytest.raises(StageError, match="factor"):
        _, out = service.process(clip_info(frames, factor="many"), frames, task="interpolate")
        list(out)


@pytest.mark.parametrize("task,params", [
    ("deinterlace", {"field_order": "tff"}), ("analog", {}), ("outpaint", {}), ("denoise", {}),
    ("deblur", {}), ("interpolate", {}), ("colorize", {}), ("superres", {})])
def test_small_batches_give_the_same_frames_as_one_large_batch(service, task, params):
    frames = textured(3, count=9)
    info = clip_info(frames, **params)
    _, one = service.process(info, frames, batch=16, task=task)
    _, small = service.process(info, frames, batch=1, task=task)
    one, small = list(one), list(small)
    assert len(one) == len(small) > 0
    for a, b in zip(one, small):
        np.testing.assert_array_equal(a, b)


def test_float16_frames_round_trip_the_codec():
    frames = [np.random.default_rng(0).random((4, 6, 3)).astype(np.float16) for _ in range(3)]
    info = ClipInfo("f", width=6, height=4, fps=Fraction(25), pixel_format="rgbf16")
    chunks = list(codec.encode_clip(info, frames, batch=2))
    _, got_info, got = codec.decode_clip(iter(chunks))
    assert got_info == info
    for a, b in zip(frames, got):
        np.testing.assert_array_equal(a, b)


def test_jobs_proto_compiles():
    import grpc as _grpc
    from services.stagekit import protos  # noqa: F401  (puts proto/ on the path)
    jobs_pb2, jobs_grpc = _grpc.protos_and_services("restoration/v1/jobs.proto")
    assert {"Submit", "Watch", "Cancel", "Fetch"} <= set(
        jobs_pb2.DESCRIPTOR.services_by_name["JobService"].methods_by_name)
