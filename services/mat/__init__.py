"""MAT: per-frame border inpainting with a mask-aware transformer.

MAT (Li, Lin, Zhou, Qi, Wang, Jia, "MAT: Mask-Aware Transformer for Large Hole Image
Inpainting", CVPR 2022; fenglinglwb/MAT) fills holes in an image: a transformer whose
attention only gathers from valid tokens (and whose mask grows as windows become valid)
builds a coarse fill from 64x64 tokens, and a style-modulated convolutional U-Net, driven
by a random latent through a StyleGAN2 mapping network, refines it. Known pixels are kept.

In the image pipeline it rebuilds the damaged border bands of each frame, frame by frame,
leaving the rest untouched: the bands the orchestrator's analysis sends in the clip header,
or, called alone with none, 20 px on every side (as the seed masked).
"""

TASK = "inpaint"
MODEL = "mat"
