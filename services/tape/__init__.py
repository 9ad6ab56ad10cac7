"""Analog-videotape restoration with the Swin-UNets of Agnolucci, Galteri, Bertini and
Del Bimbo (MICC, University of Florence).

- ``tape`` (the default): TAPE, "Reference-based Restoration of Digitized Analog
  Videotapes", WACV 2024 (arXiv:2310.14926, miccunifi/TAPE). A Swin-UNet restores each
  frame from a window of five frames centred on it; its decoder fuses features of five
  reference frames through Multi-Reference Spatial Feature Fusion (MRSFF) blocks. The
  references are clean frames of the same clip, chosen with CLIP RN50x4: frames are scored
  against prompts describing tape artefacts, split into clean and degraded with Otsu's
  threshold, and each frame gets the clean frames most similar to it.
- ``swinunet``: "Restoration of Analog Videos Using Swin-UNet", ACM MM 2022 demo
  (miccunifi/analog-video-restoration), the earlier network without references.

Both remove tape mistracking, VHS edge waving, chroma loss along scanlines, tape noise and
undersaturation from digitised analog video; they keep the frame size and rate.
"""

TASK = "analog"
MODEL = "tape"
SWINUNET = "swinunet"
