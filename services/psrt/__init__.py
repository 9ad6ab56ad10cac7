"""PSRT-recurrent: x4 video super-resolution (the ``superres`` task).

Paper: Shi, Gu, Xie, Wang, Yang, Dong, "Rethinking Alignment in Video Super-Resolution
Transformers", NeurIPS 2022 (arXiv 2207.08494); code: XPixelGroup/RethinkVSRAlignment.

A bidirectional recurrent network: SpyNet estimates optical flow between neighbouring
low-resolution frames; four propagation branches (backward, forward, backward, forward)
each refine every frame's features with a video Swin transformer over three frames, the
previous result and the one before it moved into place by *patch alignment* (whole 8x8
patches shifted by their mean flow, no interpolation); a pixel-shuffle head turns the
last branch's features into a frame four times larger, added to the bilinear upscale.
The released checkpoint is trained on REDS (bicubic x4 degradation).
"""
TASK = "superres"
MODEL = "psrt"
