"""TCVC: the neural model of the ``colorize`` task.

"Temporal Consistent Automatic Video Colorization via Semantic Correspondence", Zhang et
al., CVPR 2023 workshops (NTIRE 2023 video colorization, track 2, 3rd place; arXiv
2305.07904), with the authors' released checkpoints. Automatic (exemplar-free) video
colourisation in two stages: stage 1 (ColorVidNet) colours one frame of a shot with no
exemplar; stage 2 (a ResNet-101 + transformer encoder, a semantic-correspondence warp of the
reference colours and a colour-net decoder) propagates that reference through the shot in
clips of four frames, with a memory carried from clip to clip for temporal consistency.
Only the ab (chroma) channels are predicted; the frame's own luminance is kept. Frames keep
their size and count; colour shots pass through unchanged.
"""
TASK = "colorize"
MODEL = "tcvc"
