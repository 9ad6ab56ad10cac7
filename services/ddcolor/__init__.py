"""DDColor: automatic colorization of black-and-white frames (the ``colorize`` task, image
pipeline).

Kang, Yang, Ouyang, Ren, Li, Xie, "DDColor: Towards Photo-Realistic Image Colorization via
Dual Decoders", ICCV 2023 (arXiv 2212.11613); code https://github.com/piddnad/DDColor
(Apache-2.0).

From the lightness of an image, a ConvNeXt encoder (ConvNeXt-L in the default
``ddcolor_modelscope`` checkpoint, ConvNeXt-T in ``ddcolor_paper_tiny``) and two decoders
predict its chroma: a pixel decoder restores full resolution, a transformer colour decoder
refines 100 learned colour queries against three of its scales, and their product gives the
a/b channels of Lab. As the authors' pipeline does, each frame is squashed to 512x512, the
network sees an sRGB grey of its lightness, and the predicted a/b, upsampled, are joined
with the frame's own full-resolution L, so only the colour comes from the network.

It works frame by frame. This service colours only black-and-white (or tinted monochrome)
clips unless asked otherwise, and can smooth the predicted chroma along optical flow within
a clip against the frame-to-frame colour flicker of a per-frame model (off by default).
"""
TASK = "colorize"
MODEL = "ddcolor"
