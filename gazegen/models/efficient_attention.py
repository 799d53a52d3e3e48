"""SegFormer's efficient transformer (Xie et al. 2021, "Mix Transformer"), as Live3D uses it.

An image becomes tokens through an overlapping strided convolution (``OverlapPatchEmbed``); a
``TransformerBlock`` is pre-norm self-attention plus a Mix-FFN, both residual:

    x = x + Attention(LN(x))      keys and values from a copy of x shrunk by a stride-r conv
    x = x + FFN(LN(x))            Linear -> 3x3 depthwise conv -> GELU -> Linear

Spatial reduction (``sr_ratio`` r) cuts the keys and values from N to N / r^2 tokens, which is
what makes attention over the 128^2 tokens of E_tri affordable. Attention runs through
``torch.nn.functional.scaled_dot_product_attention`` (scale 1 / sqrt(head width), as SegFormer).

Parameter names follow ``segmentation_models_pytorch.encoders.mix_transformer`` (SegFormer's
code, which Live3DPortrait imports): ``attn.q`` and ``attn.kv`` carry no bias, ``kv`` stacks the
keys before the values, each head-major. One difference: the depthwise conv is ``mlp.dwconv``
here, ``mlp.dwconv.dwconv`` there (live3d.py maps it).

Tokens are row-major: token ``i * w + j`` is grid cell (row i, column j).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def tokens_to_image(tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, h*w, C) row-major tokens -> (B, C, h, w)."""
    b, _, c = tokens.shape
    return tokens.transpose(1, 2).reshape(b, c, *hw)  # (B, C, h*w) -> (B, C, h, w)


def image_to_tokens(image: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h*w, C) row-major tokens."""
    return image.flatten(2).transpose(1, 2)  # (B, C, h*w) -> (B, h*w, C)


class OverlapPatchEmbed(nn.Module):
    """Image (B, C_in, H, W) -> tokens (B, h*w, dim) by a 7x7 conv of the given stride, then LayerNorm."""

    def __init__(self, in_channels: int, dim: int, stride: int, patch_size: int = 7) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Returns the tokens and the grid size (h, w) they came from."""
        x = self.proj(image)  # (B, dim, h, w)
        return self.norm(image_to_tokens(x)), (x.shape[2], x.shape[3])


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys/values come from tokens shrunk by ``sr_ratio`` per side."""

    def __init__(self, dim: int, heads: int, sr_ratio: int = 1) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio) if sr_ratio > 1 else None
        self.norm = nn.LayerNorm(dim) if sr_ratio > 1 else None

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Tokens (B, N, dim) on an (h, w) grid -> (B, N, dim)."""
        b, n, dim = x.shape
        d = dim // self.heads
        q = self.q(x).reshape(b, n, self.heads, d).transpose(1, 2)  # (B, heads, N, d)
        source = x
        if self.sr is not None:
            source = self.norm(image_to_tokens(self.sr(tokens_to_image(x, hw))))  # (B, N / r^2, dim)
        kv = self.kv(source).reshape(b, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)  # (2, B, heads, M, d)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])  # (B, heads, N, d)
        return self.proj(out.transpose(1, 2).reshape(b, n, dim))  # (B, N, heads, d) -> (B, N, dim)


class MixFFN(nn.Module):
    """SegFormer's feed-forward: Linear -> 3x3 depthwise conv over the token grid -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Tokens (B, N, dim) on an (h, w) grid -> (B, N, dim)."""
        h = image_to_tokens(self.dwconv(tokens_to_image(self.fc1(x), hw)))  # (B, N, hidden)
        return self.fc2(F.gelu(h))


class TransformerBlock(nn.Module):
    """Pre-norm residual block: efficient self-attention, then Mix-FFN (SegFormer's ``Block``)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, sr_ratio: int = 1) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EfficientSelfAttention(dim, heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Tokens (B, N, dim) on an (h, w) grid -> (B, N, dim)."""
        x = x + self.attn(self.norm1(x), hw)
        return x + self.mlp(self.norm2(x), hw)


class EfficientTransformer(nn.Module):
    """Image (B, C_in, H, W) -> patch embedding of the given stride -> blocks -> image (B, dim, H/s, W/s)."""

    def __init__(
        self, in_channels: int, dim: int, depth: int, heads: int, mlp_ratio: float, sr_ratio: int = 1, stride: int = 2
    ) -> None:
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(in_channels, dim, stride)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio, sr_ratio) for _ in range(depth))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x, hw = self.patch_embed(image)  # (B, h*w, dim)
        for block in self.blocks:
            x = block(x, hw)
        return tokens_to_image(x, hw)  # (B, dim, h, w)
