"""Serving stages from Triton Inference Server.

A Triton model here is one Stage behind Triton's Python backend. A clip is one Triton
sequence: each request carries one serialized ``ClipChunk`` of stage.proto (the header,
a frame batch, or the end marker) and each response the ``ClipChunk`` messages the stage
has produced so far, so Triton carries exactly the stream the gRPC ``Process`` call does
and the codec of ``services.stagekit`` reads and writes both.
"""
