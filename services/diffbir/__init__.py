"""DiffBIR: per-frame 4x super-resolution (the image pipeline's ``superres`` task).

Lin et al., "DiffBIR: Towards Blind Image Restoration with Generative Diffusion Prior",
ECCV 2024 (arXiv 2308.15070); code https://github.com/XPixelGroup/DiffBIR (Apache-2.0).

DiffBIR restores in two stages. Stage 1, the one served here, removes degradations
(noise, blur, compression, the Real-ESRGAN family of damage it was trained on) with a
SwinIR: the frame is first enlarged 4x by bicubic, then the network (pixel-unshuffled by 8,
8 residual Swin-transformer groups on the 1/8-size features, nearest-neighbour and conv
upsampling back) restores it at that size. Stage 2, when its weights are present (the
default then; ``stage=1`` skips it), regenerates texture: the IRControlNet steers Stable
Diffusion 2.1 from noise with the VAE latent of the stage-1 output as its condition
(``stage2.py``: condition, CFG, tiling; ``sampler.py``: the authors' ``spaced`` and
``edm_dpm++_3m_sde`` samplers; ``schedule.py``: v2.1 zero-SNR v-prediction and the v1/v2
eps schedule), and a wavelet colour fix keeps the stage-1 colours.

Frames are restored independently: there is no temporal window. Stage 2's frames of one
clip share their seed and start noise, so a still scene does not flicker.
"""
TASK = "superres"
MODEL = "diffbir"
