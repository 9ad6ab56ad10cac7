"""DiffBIR stage 2's text encoder (``diffbir/model/clip.py:FrozenOpenCLIPEmbedder``): the text
tower of OpenCLIP ViT-H/14, written for this project with the parameter names of the SD
checkpoint (``cond_stage_model.model.*`` there; ``model.*`` here).

API::

    encoder = FrozenOpenCLIPEmbedder(embed_dim, vision_cfg, text_cfg, layer="penultimate")
    context = encoder.encode(["a photo of a cat", ""])    # (B, 77, width): the UNet context
    tokens = tokenize(prompts)                              # (B, 77) int64
    context = encoder.encode_tokens(tokens)

The tokenizer is open_clip's own (``open_clip.tokenizer.SimpleTokenizer``: ftfy, HTML
unescaping, whitespace collapsed, lower case, the byte-level BPE of the
``bpe_simple_vocab_16e6.txt.gz`` it ships), identical to the one the authors call:
[49406] + ids + [49407], zero-padded to 77, a longer prompt cut to 77 with the end token
last. The encoder embeds, adds the positions, runs the causal transformer blocks up to the
one the layer names (SD 2.x takes the penultimate: the last block is in the checkpoint but
skipped) and applies ``ln_final`` to every position: no pooling, no projection
(``text_projection`` and ``logit_scale`` are kept only so the checkpoint loads strictly).
The vision tower is not built (the authors delete it at once).
"""
from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

# configs/inference/cldm.yaml clip_cfg (OpenCLIP ViT-H-14, laion2b_s32b_b79k).
OFFICIAL_KWARGS = {
    "embed_dim": 1024,
    "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80,
                   "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16,
                 "layers": 24},
    "layer": "penultimate",
}
SKIPPED_BLOCKS = {"last": 0, "penultimate": 1}


@functools.cache
def tokenizer(context_length: int = 77):
    from open_clip.tokenizer import SimpleTokenizer   # heavy import: only when text is encoded
    return SimpleTokenizer(context_length=context_length)


def tokenize(prompts: Sequence[str] | str, context_length: int = 77) -> torch.Tensor:
    """(B, context_length) int64 token ids, as open_clip.tokenize gives them."""
    return tokenizer(context_length)(prompts if isinstance(prompts, str) else list(prompts))


class ResidualAttentionBlock(nn.Module):
    """Pre-LayerNorm causal self-attention and a GELU MLP, both residual."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, hidden)), ("gelu", nn.GELU()),
            ("c_proj", nn.Linear(hidden, width))]))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        normed = self.ln_1(x)
        x = x + self.attn(normed, normed, normed, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, mlp_ratio)
                                       for _ in range(layers))


class TextTower(nn.Module):
    """OpenCLIP's CLIP less its vision tower: the parameters under ``model.``."""

    def __init__(self, embed_dim: int, context_length: int, vocab_size: int, width: int,
                 heads: int, layers: int, mlp_ratio: float = 4.0, **_unused):
        super().__init__()
        # Own parameters first: the checkpoint lists them before the submodules'.
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]))
        self.transformer = Transformer(width, layers, heads, mlp_ratio)
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.ln_final = nn.LayerNorm(width)


def causal_mask(x: torch.Tensor) -> torch.Tensor:
    """Additive (L, L) mask for the tokens x (B, L, D): -inf above the diagonal, so a token
    sees only those before it. Made per call, not a buffer: a network built without
    initialisation (then loaded) would hold garbage in a buffer the file does not carry."""
    length = x.shape[1]
    return torch.full((length, length), float("-inf"), device=x.device, dtype=x.dtype).triu(1)


class FrozenOpenCLIPEmbedder(nn.Module):
    def __init__(self, embed_dim: int, text_cfg: dict, vision_cfg: dict | None = None,
                 layer: str = "penultimate"):
        super().__init__()
        if layer not in SKIPPED_BLOCKS:
            raise ValueError(f"layer must be one of {sorted(SKIPPED_BLOCKS)}, not {layer!r}")
        self.model = TextTower(embed_dim, **text_cfg)
        self.layer = layer
        self.context_length = text_cfg["context_length"]

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token plus position embeddings, (B, 77, width)."""
        return self.model.token_embedding(tokens) + self.model.positional_embedding

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 77, width) context of (B, 77) token ids."""
        model = self.model
        x = self.embed(tokens)
        mask = causal_mask(x)
        blocks = model.transformer.resblocks
        for block in list(blocks)[:len(blocks) - SKIPPED_BLOCKS[self.layer]]:
            x = block(x, mask)
        return model.ln_final(x)

    def encode(self, prompts: Sequence[str] | str) -> torch.Tensor:
        tokens = tokenize(prompts, self.context_length)
        return self.encode_tokens(tokens.to(self.model.token_embedding.weight.device))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.encode_tokens(tokens)
