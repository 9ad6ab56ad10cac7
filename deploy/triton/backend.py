"""The Triton Python-backend model that serves one Stage.

Every model folder of ``deploy/triton/models`` has a ``1/model.py`` that imports
``TritonPythonModel`` from here; its config.pbtxt names the stage with the parameters
``model`` (the services/<model> package) and ``task``. The gRPC servicer does the work, so
a stage behaves the same behind Triton as behind ``python -m services.<model>``.

Triton's sequence batcher keeps a clip's requests on one model instance, in order; a
``ClipPump`` per sequence carries the stage's state (its temporal window, a recurrent
network's hidden state) from one request to the next.
"""
from __future__ import annotations

import importlib
import json
import queue
import threading
import time

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from services.stagekit.protos import stage_pb2 as pb
from services.stagekit.server import StageServicer

_WANT = object()   # the stage asks for its next input chunk
_DONE = object()   # the stage has sent its last output chunk


class StageAborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code = code
        self.details = details


class _Context:
    """The part of a gRPC context that StageServicer.Process uses: aborting raises."""

    def abort(self, code, details):
        raise StageAborted(code, details)


class ClipPump:
    """StageServicer.Process for one clip, on its own thread, fed one chunk at a time.

    ``push`` hands over a chunk and returns every output chunk the stage makes before it
    asks for the next input (or finishes): a request is answered with all the output its
    input made possible, and the stage never waits for input that has not been sent."""

    def __init__(self, servicer: StageServicer):
        self.inbox: queue.Queue = queue.Queue()
        self.outbox: queue.Queue = queue.Queue()
        self.wants = 0        # inputs the stage has asked for so far
        self.pushed = 0
        self.finished = False
        self.touched = time.monotonic()
        self.thread = threading.Thread(target=self._run, args=(servicer,), daemon=True)
        self.thread.start()

    def _inputs(self):
        while True:
            self.outbox.put(_WANT)
            chunk = self.inbox.get()
            if chunk is None:
                return
            yield chunk

    def _run(self, servicer: StageServicer) -> None:
        try:
            for chunk in servicer.Process(self._inputs(), _Context()):
                self.outbox.put(chunk)
            self.outbox.put(_DONE)
        except Exception as exc:  # handed to the request that is waiting, not lost
            self.outbox.put(exc)

    def push(self, chunk: "pb.ClipChunk") -> list["pb.ClipChunk"]:
        if self.finished:
            raise StageAborted(grpc.StatusCode.INVALID_ARGUMENT, "chunk after the end of the clip")
        self.touched = time.monotonic()
        self.inbox.put(chunk)
        self.pushed += 1
        out = []
        while True:
            item = self.outbox.get()
            if item is _WANT:
                self.wants += 1
                if self.wants > self.pushed:
                    return out
            elif item is _DONE:
                self.finished = True
                return out
            elif isinstance(item, Exception):
                self.finished = True
                raise item
            else:
                out.append(item)

    def close(self) -> None:
        """End an abandoned clip: the stage sees its input stop and its thread returns."""
        if not self.finished:
            self.inbox.put(None)
            self.finished = True


def _parameters(config: dict) -> dict[str, str]:
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def _device(args: dict) -> str:
    if args.get("model_instance_kind") == "GPU":
        return f"cuda:{args.get('model_instance_device_id', 0)}"
    return "cpu"


def _servicer(model: str, task: str, device: str) -> StageServicer:
    module = importlib.import_module(f"services.{model}.stage")
    made = module.create_stage(weights=None, device=device, arch=None)
    stages = [s for s in (made if isinstance(made, list) else [made]) if s.task == task]
    if not stages:
        raise ValueError(f"services.{model} serves no '{task}' stage")
    return StageServicer(stages)


def _scalar(pb_utils, request, name: str):
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]


def _chunk(pb_utils, request) -> "pb.ClipChunk":
    try:
        return pb.ClipChunk.FromString(bytes(_scalar(pb_utils, request, "CHUNK")))
    except DecodeError as exc:
        raise StageAborted(grpc.StatusCode.INVALID_ARGUMENT, f"CHUNK is not a ClipChunk ({exc})") from None


class TritonPythonModel:
    def initialize(self, args):
        params = _parameters(json.loads(args["model_config"]))
        self.servicer = _servicer(params["model"], params["task"], _device(args))
        self.idle_seconds = float(params.get("idle_seconds", "600"))
        self.pumps: dict[int, ClipPump] = {}

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils
        self._drop_idle()
        return [self._answer(pb_utils, request) for request in requests]

    def finalize(self):
        for pump in self.pumps.values():
            pump.close()
        self.pumps.clear()

    def _drop_idle(self) -> None:
        """Sequences Triton timed out never send their end: free their threads."""
        now = time.monotonic()
        for sequence, pump in list(self.pumps.items()):
            if now - pump.touched > self.idle_seconds:
                self.pumps.pop(sequence).close()

    def _answer(self, pb_utils, request):
        sequence = int(_scalar(pb_utils, request, "CORRID"))
        try:
            if _scalar(pb_utils, request, "START"):
                self._open(sequence)
            pump = self.pumps.get(sequence)
            if pump is None:
                raise StageAborted(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"sequence {sequence} was not started (or timed out)")
            out = pump.push(_chunk(pb_utils, request))
        except StageAborted as exc:
            self.pumps.pop(sequence, None)
            code = (pb_utils.TritonError.INVALID_ARG
                    if exc.code == grpc.StatusCode.INVALID_ARGUMENT else pb_utils.TritonError.INTERNAL)
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(exc.details, code))
        if _scalar(pb_utils, request, "END") or pump.finished:
            self.pumps.pop(sequence, None)
        chunks = np.array([c.SerializeToString() for c in out], dtype=np.object_)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("CHUNKS", chunks)])

    def _open(self, sequence: int) -> None:
        stale = self.pumps.pop(sequence, None)
        if stale is not None:
            stale.close()
        self.pumps[sequence] = ClipPump(self.servicer)
