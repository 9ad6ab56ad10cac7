"""MMP-RNN: video deblurring guided by motion magnitude (the ``deblur`` task).

Wang, Lu, Gao, Wang, Zhong, Zheng, Yamashita, "Efficient Video Deblurring Guided by Motion
Magnitude", ECCV 2022 (arXiv 2207.13374); code https://github.com/sollynoay/MMP-RNN (MIT).

A small U-Net (the MMP-Net) estimates, for every frame, a per-pixel motion-magnitude prior
(how far each pixel moved during the exposure, i.e. how blurred it is). A recurrent
network of residual dense blocks runs over the clip at quarter resolution with that prior
scaling its features; each output frame fuses the hidden states of its two past and two
future neighbours and is reconstructed at full resolution. The authors run it on chunks
of 20 frames with the recurrence restarted in each chunk; this service does the same and
also produces the clip's first and last two frames, which the authors' loop never does.
"""
TASK = "deblur"
MODEL = "mmprnn"
