"""Classical (no-weights) models for every task of the video pipeline: numpy + OpenCV.

They are what runs on a laptop, in CI and on a first run before any weights are pulled,
so each is a real algorithm rather than a placeholder:

- deinterlace: motion-compensated, motion-adaptive deinterlacing to the field rate
  (bwdif's decision rule on motion-compensated fields);
- analog: a motion-aware temporal impulse filter for dropouts, scratches and dirt, VHS
  repairs (line jitter, chroma delay and bleed), and luminance flicker reduction;
- outpaint: detection of damaged border bands, rebuilt from neighbouring frames by optical
  flow, then spatially; burned-in overlays (date stamps, found by the orchestrator's
  analysis) removed the same way (``overlays=remove``, the default, or ``keep``);
- colorize: finds black-and-white frames; colours them from reference images by
  luminance-and-texture matched transfer, or leaves them grey and says so;
- deblur: noise-regularised Wiener deconvolution with an estimated Gaussian PSF;
- denoise: motion-compensated temporal averaging over +/-2 frames with occlusion
  rejection, then a spatial pass sized to the noise left;
- superres: 4x by lanczos plus iterative back-projection against an area-downscale model;
- interpolate: bidirectional optical flow seeded by an exhaustive block search (for fast
  motion), then, per pixel, the candidate motions at the intermediate time weighted by
  how well the two frames agree along them; never across a clip's end (a shot cut).

``python -m services.classical --listen HOST:PORT`` serves all eight.
"""

MODEL = "classical"
TASKS = ("deinterlace", "analog", "outpaint", "deblur", "colorize", "denoise", "superres", "interpolate")
