"""RVRT: the neural model of the ``denoise`` task.

"Recurrent Video Restoration Transformer with Guided Deformable Attention", Liang et al.,
NeurIPS 2022 (arXiv 2206.02146), with the authors' DAVIS video-denoising checkpoint
(task 006, non-blind: the noise level sigma is an input). Clips of two frames are
refined recurrently, back and forth twice; each step aligns the propagated features to
the current clip with guided deformable attention (optical flow from SpyNet plus learnt
offsets). Frames keep their size and count.
"""
TASK = "denoise"
MODEL = "rvrt"
