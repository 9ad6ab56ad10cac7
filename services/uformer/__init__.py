"""Uformer: single-image motion deblurring with a U-shaped window Transformer (the
``deblur`` task of the image pipeline).

Wang, Cun, Bao, Zhou, Liu, Li, "Uformer: A General U-Shaped Transformer for Image
Restoration", CVPR 2022 (arXiv 2106.03106); code https://github.com/ZhendongWang6/Uformer
(MIT). The model served is Uformer-B trained on GoPro.

A 3x3 conv embeds the image; four encoder levels of locally-enhanced window Transformer
blocks (8x8 window attention, shifted in every other block, and a feed-forward with a
depthwise conv) each halve the resolution; a bottleneck and four decoder levels with skip
concatenations and learnt window "modulators" come back up; a 3x3 conv predicts a residual
added to the blurred input. An image model in a video pipeline: every frame is restored on
its own, batched, padded as the authors pad (or in overlapping tiles, see ``stage``).
"""
TASK = "deblur"
MODEL = "uformer"
