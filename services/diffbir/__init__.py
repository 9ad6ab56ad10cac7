"""DiffBIR stage 1: per-frame 4x super-resolution (the image pipeline's ``superres`` task).

Lin et al., "DiffBIR: Towards Blind Image Restoration with Generative Diffusion Prior",
ECCV 2024 (arXiv 2308.15070); code https://github.com/XPixelGroup/DiffBIR (Apache-2.0).

DiffBIR restores in two stages. Stage 1, the one served here, removes degradations
(noise, blur, compression, the Real-ESRGAN family of damage it was trained on) with a
SwinIR: the frame is first enlarged 4x by bicubic, then the network (pixel-unshuffled by 8,
8 residual Swin-transformer groups on the 1/8-size features, nearest-neighbour and conv
upsampling back) restores it at that size. Stage 2, a ControlNet-guided Stable Diffusion
that regenerates texture from the stage-1 result, is slow and was dropped by the seed
project; its schedules are in ``schedule.py`` for the issue that adds it.

Frames are restored independently: there is no temporal window.
"""
TASK = "superres"
MODEL = "diffbir"
