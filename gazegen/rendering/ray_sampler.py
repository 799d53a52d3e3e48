"""Where to sample along each ray: stratified coarse depths and importance (inverse-CDF) fine depths.

Depths ``t`` are distances along unit ray directions, in world units, between the config's
``ray_start`` and ``ray_end``. Every random number enters as an explicit ``offsets`` tensor in
[0, 1) (``sample_offsets``): uniform draws when training, 0.5 when not, so evaluation is
deterministic and a renderer that draws all offsets up front gives the same samples whether it
processes the rays at once or in chunks.

Coarse: the range is cut into S equal strata; sample i sits at ``near + (i + offset_i) * w`` with
``w = (far - near) / S`` (stratum midpoints in evaluation). EG3D instead uses
``linspace(near, far, S)`` plus a jitter of one spacing, always on, so its samples may overshoot
``far``; ours stay inside [near, far].

Fine: NeRF's ``sample_pdf``, written here: the coarse weights of the S-1 intervals between
consecutive coarse samples form a piecewise-constant density over [t_0, t_{S-1}]; smoothed as in
EG3D (max-pool 2, average-pool 2, + 0.01) and inverted at ``u_j = (j + offset_j) / M``. EG3D
pairs the S-1 interval midpoints with S-3 weights (``weights[:, 1:-1]``), dropping its last bin;
here bins and weights line up.

Both sets come out sorted along the ray (stratified depths by construction, fine depths because
the inverse CDF is monotone in ``u``), so the renderer merges them (``merge_order``) instead of
sorting their union.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

WEIGHT_PADDING = 0.01  # EG3D: added to the smoothed weights so every interval keeps some samples


def sample_offsets(
    shape: tuple[int, ...],
    *,
    training: bool,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Positions within strata, ``shape``: U[0, 1) from ``generator`` when training, else all 0.5."""
    if training:
        return torch.rand(shape, generator=generator, device=device, dtype=dtype)
    return torch.full(shape, 0.5, device=device, dtype=dtype)


def stratified_depths(near: float, far: float, offsets: torch.Tensor) -> torch.Tensor:
    """Offsets (..., S) in [0, 1) -> depths (..., S), sample i in stratum [near + i w, near + (i+1) w)."""
    s = offsets.shape[-1]
    width = (far - near) / s
    index = torch.arange(s, device=offsets.device, dtype=offsets.dtype)  # (S,)
    return near + (index + offsets) * width


def smooth_weights(weights: torch.Tensor, padding: float = WEIGHT_PADDING) -> torch.Tensor:
    """EG3D's blur of interval weights (..., K): max over neighbour pairs, mean of pairs, + padding."""
    shape = weights.shape
    w = weights.reshape(-1, 1, shape[-1])  # (R, 1, K)
    w = F.max_pool1d(w, 2, 1, padding=1)  # (R, 1, K + 1): max(w[i-1], w[i])
    w = F.avg_pool1d(w, 2, 1)  # (R, 1, K): mean of neighbouring maxima
    return w.reshape(shape) + padding


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse CDF of a piecewise-constant density: bins (..., K+1) edges, weights (..., K) >= 0, u (..., M) in [0, 1).

    Bin k spans [bins[k], bins[k+1]] with probability weights[k] / sum(weights) (uniform when all
    weights are zero). Returns (..., M) depths; a u at which the CDF rises in bin k maps into bin
    k, so bins of zero weight receive no samples.
    """
    k = weights.shape[-1]
    total = weights.sum(-1, keepdim=True)  # (..., 1)
    weights = torch.where(total > 0, weights, torch.ones_like(weights))
    pdf = weights / weights.sum(-1, keepdim=True)  # (..., K)
    cdf = torch.cat([torch.zeros_like(pdf[..., :1]), pdf.cumsum(-1)], -1)  # (..., K+1), cdf[0] = 0
    cdf[..., -1] = 1.0  # exact despite rounding: every u < 1 falls inside
    index = torch.searchsorted(cdf.contiguous(), u.contiguous(), right=True) - 1  # (..., M): cdf[i] <= u < cdf[i+1]
    index = index.clamp(0, k - 1)
    cdf_lo, cdf_hi = cdf.gather(-1, index), cdf.gather(-1, index + 1)  # (..., M) each
    bin_lo, bin_hi = bins.gather(-1, index), bins.gather(-1, index + 1)
    span = cdf_hi - cdf_lo
    frac = torch.where(span > 0, (u - cdf_lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(u))
    return bin_lo + frac.clamp(0.0, 1.0) * (bin_hi - bin_lo)


@torch.no_grad()
def importance_depths(
    depths: torch.Tensor, weights: torch.Tensor, offsets: torch.Tensor, *, padding: float = WEIGHT_PADDING
) -> torch.Tensor:
    """Coarse depths (B, N, S) and interval weights (B, N, S-1) -> fine depths (B, N, M), no gradient.

    ``offsets`` (B, N, M) place the CDF levels ``u_j = (j + offsets_j) / M`` (stratified in u).
    """
    m = offsets.shape[-1]
    index = torch.arange(m, device=offsets.device, dtype=offsets.dtype)  # (M,)
    u = (index + offsets) / m  # (B, N, M)
    return sample_pdf(depths, smooth_weights(weights, padding), u.to(depths.dtype))


def merge_order(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Sorted first (..., S) and second (..., M) -> the order (..., S + M) that merges ``cat([first, second], -1)``.

    ``cat([first, second], -1).gather(-1, order)`` is sorted; on ties ``first`` comes first, as in
    a stable sort of the concatenation. Costs two ``searchsorted``, no general sort.
    """
    s, m = first.shape[-1], second.shape[-1]
    first, second = first.contiguous(), second.contiguous()
    i = torch.arange(s, device=first.device).expand_as(first)  # (..., S)
    j = torch.arange(m, device=first.device).expand_as(second)  # (..., M)
    to_first = i + torch.searchsorted(second, first, right=False)  # (..., S): merged slot of first[i]
    to_second = j + torch.searchsorted(first, second, right=True)  # (..., M): merged slot of second[j]
    order = torch.empty((*first.shape[:-1], s + m), dtype=torch.long, device=first.device)
    order.scatter_(-1, to_first, i)
    order.scatter_(-1, to_second, j + s)
    return order
