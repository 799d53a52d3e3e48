"""The gaze condition: E_g and the cross-attention after E_h (paper section 3.2, Eq. 2).

E_g (``GazeEncoder``): a gaze (pitch, yaw) in radians, in the head frame, becomes Fourier
features ``[g, sin(pi 2^l g), cos(pi 2^l g)]`` for l = 0 .. L-1, then an MLP whose output is
read as K tokens of width C, the channel count of F_h.

``GazeCrossAttention``: every pixel of F_h is a query token, the K gaze tokens are the keys and
values (Stable Diffusion's conditioning), multi-head through torch's
``scaled_dot_product_attention``:

    F_app = F_h + W_o Attention(LN(F_h) W_q, E_g(g) W_k, E_g(g) W_v)

``W_o`` (``proj_out``) starts at zero, so at initialisation F_app = F_h exactly and a network
loaded from Live3D behaves as Live3D whatever the gaze. The other parameters of the gaze branch
then receive no gradient until ``proj_out`` has moved away from zero (after the first step).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def fourier_features(gaze: torch.Tensor, frequencies: int) -> torch.Tensor:
    """(B, 2) angles -> (B, 2 + 4 L): the angles, then sin and cos of pi 2^l times each angle."""
    scales = math.pi * 2.0 ** torch.arange(frequencies, device=gaze.device, dtype=gaze.dtype)  # (L,)
    phases = (gaze[:, :, None] * scales).flatten(1)  # (B, 2, L) -> (B, 2L)
    return torch.cat([gaze, phases.sin(), phases.cos()], 1)


class GazeEncoder(nn.Module):
    """E_g: gaze (B, 2) pitch/yaw radians -> (B, tokens, width) gaze tokens."""

    def __init__(self, tokens: int, width: int, frequencies: int, hidden: int) -> None:
        super().__init__()
        self.tokens, self.width, self.frequencies = tokens, width, frequencies
        self.mlp = nn.Sequential(
            nn.Linear(2 + 4 * frequencies, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, tokens * width),
        )

    def forward(self, gaze: torch.Tensor) -> torch.Tensor:
        if gaze.ndim != 2 or gaze.shape[1] != 2:
            raise ValueError(f"gaze must be (B, 2) pitch/yaw radians, got shape {tuple(gaze.shape)}")
        out = self.mlp(fourier_features(gaze, self.frequencies))  # (B, K*C)
        return out.reshape(gaze.shape[0], self.tokens, self.width)  # (B, K, C)


class GazeCrossAttention(nn.Module):
    """F_h (B_f, C, H, W) and gaze tokens (B, K, C) -> F_app (B, C, H, W); B_f is B or 1 (shared source)."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"fusion width {channels} is not divisible by {heads} heads")
        self.heads = heads
        self.norm = nn.LayerNorm(channels)
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(channels, channels, bias=False)
        self.to_v = nn.Linear(channels, channels, bias=False)
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)  # (B, heads, n, C/heads)

    def forward(self, high: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        bf, c, h, w = high.shape
        b = tokens.shape[0]
        if bf not in (1, b):
            raise ValueError(f"features batch {bf} does not match gaze batch {b} (nor is it 1)")
        queries = self.norm(high.flatten(2).transpose(1, 2))  # (B_f, H*W, C)
        q = self._split_heads(self.to_q(queries)).expand(b, -1, -1, -1)  # (B, heads, H*W, C/heads)
        k = self._split_heads(self.to_k(tokens))  # (B, heads, K, C/heads)
        v = self._split_heads(self.to_v(tokens))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, H*W, C/heads)
        out = self.proj_out(out.transpose(1, 2).reshape(b, h * w, c))  # (B, H*W, C)
        return high + out.transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W)
