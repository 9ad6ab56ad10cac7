"""ProPainter: rebuilding a tape's damaged borders (the ``outpaint`` task).

S. Zhou, C. Li, K. C. K. Chan, C. C. Loy, "ProPainter: Improving Propagation and
Transformer for Video Inpainting", ICCV 2023 (https://github.com/sczhou/ProPainter).

Three networks work together: RAFT measures optical flow, a recurrent flow-completion
network fills the flow inside the holes, and the InpaintGenerator propagates known pixels
along the completed flow (image propagation), then features (flow-guided deformable
alignment) and finally hallucinates what is left with a sparse video transformer. The
stage masks the damaged border band (and the head-switching band) of each clip and
either completes it in place or crops it and grows the picture back to size.

The released weights are under the NTU S-Lab License 1.0: non-commercial use only.
"""
TASK = "outpaint"
MODEL = "propainter"
