"""TAPE's reference selection: which frames of a clip are clean, and which of them each
frame borrows detail from.

The authors score every frame with CLIP RN50x4 against an ensemble of twelve "degraded
photo" prompts, split the scores with Otsu's threshold, and give each frame the D clean
frames whose CLIP features are most similar to its own. The logic over features lives
here in plain numpy/torch so it can be checked without CLIP; ``ClipScorer`` supplies the
features from the OpenAI RN50x4 weights through open_clip.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PROMPTS = (
    "an image with interlacing artifacts",
    "an image of a degraded photo",
    "a photo with distortions",
    "an image with color artifacts along rows",
    "an image of a noisy photo",
    "an image of a bad photo",
    "a jpeg corrupted image of a photo",
    "a pixelated image of a photo",
    "a blurry image of a photo",
    "a jpeg corrupted photo",
    "a pixelated photo",
    "a blurry photo",
)
CLIP_MODEL = "RN50x4"
OTSU_BINS = 256


def text_direction(text_features: torch.Tensor) -> torch.Tensor:
    """Prompt ensembling: the mean of the normalised prompt features, normalised: (1, D)."""
    text = F.normalize(text_features.float(), dim=-1)
    return F.normalize(text.mean(dim=0), dim=-1).unsqueeze(0)


def frame_score(image_feature: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, float]:
    """One frame's normalised feature (1, D) and its artifact score (high = degraded),
    computed one frame at a time in float32 as the authors do."""
    feature = F.normalize(image_feature.float().reshape(1, -1), dim=-1)
    return feature, float((feature @ text.T).item())


def otsu_threshold(values: np.ndarray, bins: int = OTSU_BINS) -> float:
    """Otsu's threshold as scikit-image computes it for float data: the centre of the
    histogram bin (``bins`` bins over [min, max]) maximising the between-class variance."""
    values = np.asarray(values).reshape(-1)
    if np.all(values == values[0]):
        return float(values[0])
    counts, edges = np.histogram(values, bins=bins)
    counts = counts.astype(np.float32)
    centres = (edges[:-1] + edges[1:]) / 2.0
    weight1 = np.cumsum(counts)
    weight2 = np.cumsum(counts[::-1])[::-1]
    mean1 = np.cumsum(counts * centres) / weight1
    mean2 = (np.cumsum((counts * centres)[::-1]) / weight2[::-1])[::-1]
    variance = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return float(centres[np.argmax(variance)])


def clean_frames(scores: np.ndarray) -> tuple[np.ndarray, float]:
    """Indices of the clean frames in ascending score order, and the threshold.

    Only scores strictly below the threshold's bin centre count as clean (the authors'
    searchsorted), so the top of the clean class is dropped when it lies in the upper
    half of that bin. When nothing falls below it (one frame, or all scores equal) every
    frame is a candidate, where the authors' script would fail."""
    scores = np.asarray(scores, dtype=np.float64)
    threshold = otsu_threshold(np.sort(scores))
    count = int(np.sort(scores).searchsorted(threshold))
    order = np.argsort(scores)
    return (order[:count] if count else order), threshold


def select_references(features: torch.Tensor, clean: np.ndarray, count: int = 5,
                      upstream_bug: bool = False) -> np.ndarray:
    """(N, count) reference frame indices: for each frame, the ``count`` clean frames most
    similar to it (cosine similarity), repeating the first when there are fewer.

    ``upstream_bug`` reproduces the released script, which returns the rank positions
    inside the clean list as frame numbers, so its references are always among the first
    len(clean) frames of the clip, degraded or not."""
    candidates = features[torch.as_tensor(clean, dtype=torch.long)]
    rows = []
    for feature in features:
        similarity = F.cosine_similarity(feature.unsqueeze(0), candidates, dim=-1)
        ranks = torch.argsort(similarity, descending=True)[:count].numpy()
        chosen = ranks if upstream_bug else np.asarray(clean)[ranks]
        chosen = list(chosen) + [chosen[0]] * (count - len(chosen))
        rows.append(chosen)
    return np.asarray(rows, dtype=np.int64)


def selection(image_features: torch.Tensor, text_features: torch.Tensor, count: int = 5,
              upstream_bug: bool = False) -> dict:
    """The whole selection from raw CLIP outputs: scores, threshold, clean, references."""
    text = text_direction(text_features)
    pairs = [frame_score(f, text) for f in image_features]
    features = torch.cat([feature for feature, _ in pairs])
    scores = np.asarray([score for _, score in pairs], dtype=np.float64)
    clean, threshold = clean_frames(scores)
    return {"scores": scores, "threshold": threshold, "clean": clean,
            "references": select_references(features, clean, count, upstream_bug)}


class ClipScorer:
    """CLIP RN50x4 from the OpenAI weights file (``RN50x4.pt``), through open_clip:
    the prompt direction once, then a raw image feature per frame."""

    def __init__(self, path: Path, device: torch.device):
        import open_clip  # kept optional: only TAPE's selection needs it
        self.device = device
        self.model = self.load_model(path, device)
        size = self.model.visual.image_size
        self.preprocess = open_clip.image_transform(
            size if isinstance(size, int) else size[0], is_train=False,
            mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD)
        tokens = open_clip.tokenize(list(PROMPTS)).to(device)
        with torch.inference_mode(), self._autocast():
            self.text_features = self.model.encode_text(tokens).float().cpu()

    @staticmethod
    def load_model(path: Path, device: torch.device):
        """The network from OpenAI's file, through open_clip (strict, float32)."""
        import open_clip
        return open_clip.load_openai_model(str(path), precision="fp32", device=device).eval()

    def _autocast(self):
        # The authors run CLIP under CUDA autocast; on the CPU it is plain float32.
        return torch.autocast("cuda", dtype=torch.float16, enabled=self.device.type == "cuda")

    def image_feature(self, frame: np.ndarray) -> torch.Tensor:
        """Raw encode_image output (1, 640) for an RGB uint8 frame, preprocessed like
        CLIP's own transform on the PIL image (bicubic short side, centre crop)."""
        from PIL import Image
        pixels = self.preprocess(Image.fromarray(frame)).unsqueeze(0).to(self.device)
        with torch.inference_mode(), self._autocast():
            return self.model.encode_image(pixels).float().cpu()
