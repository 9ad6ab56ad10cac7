"""SF-AdaCoF: 2x (or 4x) video frame interpolation with a Siamese-feature AdaCoF network.

SF-AdaCoF ("Siamese Feature map - AdaCoF", Go-MinSeong/SF-AdaCoF, 2023) builds on AdaCoF
(Lee et al., "AdaCoF: Adaptive Collaboration of Flows for Video Frame Interpolation",
CVPR 2020, arXiv:1907.10244). Both frames of a pair go through one shared U-Net encoder
whose levels are gated by frame-difference "flow" maps; seven heads then predict, for
every output pixel, 25 softmax tap weights and 25 (row, column) offsets per input frame
and an occlusion map. The middle frame is the occlusion blend of the two AdaCoF-warped
frames (a per-pixel deformable 5x5 kernel with bilinear taps).

The stage doubles the frame rate of a clip (``factor=4`` recurses on the unrounded
midpoint, like the authors' ``--repeat 2``). A clip never spans a shot cut, so no frame is
interpolated across one; the clip's last frame is held rather than dropped.
"""

TASK = "interpolate"
MODEL = "sfadacof"
