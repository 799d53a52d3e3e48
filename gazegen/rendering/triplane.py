"""Bilinear sampling of a triplane at world points (EG3D's ``sample_from_planes``, one named convention).

A triplane is a tensor ``(B, 3, C, P, P)``: three feature planes of ``C`` channels over the cube
``[-box_warp/2, box_warp/2]^3`` of the world frame (geometry.py: x to the subject's left, y up,
z out of the face). A world point ``p`` becomes grid coordinates ``q = p * 2 / box_warp`` in
``[-1, 1]^3``; plane ``k`` reads ``(q[u_k], q[v_k])`` where ``(u_k, v_k) = PLANE_AXES[k]``:

    plane 0: u = x, v = y   (XY, the frontal view)
    plane 1: u = x, v = z   (XZ, the view from above/below)
    plane 2: u = z, v = y   (ZY, the side view)

``u`` is the plane's column axis and ``v`` its row axis, as in ``grid_sample``: with
``align_corners=False``, u = -1 is the left edge of column 0 and u = +1 the right edge of
column P-1, so texel (row i, column j) has its centre at ``((2j+1)/P - 1, (2i+1)/P - 1)``.
Points outside the cube read zeros (``padding_mode="zeros"``).

EG3D's quirk: its ``generate_planes`` + ``project_onto_planes`` read plane 2 at ``(z, x)``, so
the XZ pair is sampled twice and YZ never (NVlabs/eg3d issues #30 and #67). Networks trained
with EG3D's code (EG3D, Live3D) learned their third plane that way; ``EG3D_PLANE_AXES`` with
``eg3d_compatible=True`` reproduces it so their weights render what they were trained to.

The renderer reads the planes once per point with ``PlaneTexels.mean_at`` and gets their mean
directly as (B, N, C), never the (B, 3, N, C) of ``sample_planes``; the same numbers as
``sample_planes(...).mean(1)`` up to float rounding (tests/test_rendering.py). Two ways:

* texel rows (every read without autograd, and large planes under it; `base`: 32 x 256^2
  floats, 8 MB a plane): the four bilinear taps of each plane become 12 (texel, weight) pairs per
  point, 1/3 folded into the weights, and one ``embedding_bag`` sums the weighted texel rows of a
  channel-last copy of the planes with a zero border (so a tap off the plane reads zeros without a
  test of its own): a tap reads one contiguous row of C values instead of C values a plane apart;
* small planes that need gradients (one plane of at most ``TEXEL_ROWS_ABOVE_BYTES``, e.g. the
  demo preset in training): ``grid_sample`` on each plane in turn, summed in place.

Measured on this project's CPU (one thread): texel rows against grid_sample per plane, without
autograd, render_peer's tiny setting (32 x 64^2 planes) 12.2 vs 16.1 ms and base 656 vs 1289 ms;
a demo training step (16 x 64^2 planes, batch 4) 900 vs 873 ms, hence grid_sample there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

AxisPair = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
TEXEL_ROWS_ABOVE_BYTES = 1 << 20  # under autograd, planes larger than this (per plane) are read as texel rows
BORDER = 3  # texel rows: zero texels added along each side of a plane, 1 before its first row/column and 2 after its last

X, Y, Z = 0, 1, 2
PLANE_AXES: AxisPair = ((X, Y), (X, Z), (Z, Y))  # (u, v) world axes of planes 0, 1, 2
EG3D_PLANE_AXES: AxisPair = ((X, Y), (X, Z), (Z, X))  # EG3D's projection: YZ is never sampled


def plane_axes(eg3d_compatible: bool = False) -> AxisPair:
    """The (u, v) world axes of each plane: ``EG3D_PLANE_AXES`` when ``eg3d_compatible``, else ``PLANE_AXES``."""
    return EG3D_PLANE_AXES if eg3d_compatible else PLANE_AXES


def project_to_planes(points: torch.Tensor, box_warp: float, eg3d_compatible: bool = False) -> torch.Tensor:
    """World points (B, N, 3) -> grid coordinates (B, 3, N, 2) on each plane, in [-1, 1] inside the cube."""
    q = points * (2.0 / box_warp)  # (B, N, 3)
    return torch.stack([q[..., [u, v]] for u, v in plane_axes(eg3d_compatible)], 1)  # (B, 3, N, 2)


def sample_planes(
    planes: torch.Tensor, points: torch.Tensor, box_warp: float, *, eg3d_compatible: bool = False
) -> torch.Tensor:
    """Features of ``planes`` (Bp, 3, C, P, P) at world ``points`` (B, N, 3) -> (B, 3, N, C).

    ``Bp`` is ``B``, or 1 to share one triplane across all ``B`` point sets (one face seen by
    many cameras): the point sets are then read from the single triplane without copying it.
    """
    bp, n_planes, c, h, w = planes.shape
    b, n, _ = points.shape
    if n_planes != 3:
        raise ValueError(f"expected 3 planes, got planes of shape {tuple(planes.shape)}")
    if bp == 1 and b > 1:
        shared = sample_planes(planes, points.reshape(1, b * n, 3), box_warp, eg3d_compatible=eg3d_compatible)
        return shared.reshape(3, b, n, c).transpose(0, 1)  # (1, 3, B*N, C) -> (3, B, N, C) -> (B, 3, N, C)
    if bp != b:
        raise ValueError(f"planes batch {bp} does not match points batch {b} (nor is it 1)")
    grid = project_to_planes(points, box_warp, eg3d_compatible).to(planes.dtype)  # (B, 3, N, 2)
    grid = grid.reshape(b * 3, 1, n, 2)  # (B*3, 1, N, 2): one row of N points per plane
    flat = planes.reshape(b * 3, c, h, w)  # (B*3, C, P, P)
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (B*3, C, 1, N)
    return out.reshape(b, 3, c, n).permute(0, 1, 3, 2)  # (B, 3, N, C)


def bilinear_taps(
    points: torch.Tensor, box_warp: float, resolution: int, eg3d_compatible: bool = False,
    index_dtype: torch.dtype = torch.long,
) -> tuple[torch.Tensor, torch.Tensor]:
    """World points (N, 3) -> texel indices (N, 12) (``index_dtype``) into a plane-major list of bordered planes,
    and weights (N, 12).

    The list holds each plane with a zero border (``bordered_planes``: P + 3 texels a side, texel
    (i, j) at (i + 1, j + 1)). Tap (k, t) of a point is corner t of its bilinear cell on plane k,
    weighted by its bilinear weight / 3. A texel coordinate is clamped to [-1, P] first: a cell
    with a corner off the plane then reads the border's zeros there (``grid_sample``'s zero
    padding with ``align_corners=False``), and a point beyond the plane reads only zeros, so no
    tap needs a test of its own. The three world axes are worked out once and shared by the
    planes that use them; all work runs on rows of N points (broadcasting over tiny trailing
    dimensions measured ~30x slower per element).
    """
    p, side = resolution, resolution + BORDER
    axes = plane_axes(eg3d_compatible)
    texel = (points.t() * (p / box_warp)).add_(p / 2 - 0.5).clamp_(-1.0, float(p))  # (3, N) texel coordinate per world axis
    low = texel.floor()
    frac = texel.sub_(low)  # (3, N) weight of the upper neighbour
    low = low.to(index_dtype)
    u_rows = torch.tensor([u for u, _ in axes], device=points.device)  # world axis of each plane's columns
    v_rows = torch.tensor([v for _, v in axes], device=points.device)  # ... and of its rows
    start = torch.arange(3, device=points.device, dtype=index_dtype)[:, None] * (side * side) + (side + 1)  # (3, 1) texel (0, 0) of each plane
    base = (low * side).index_select(0, v_rows).add_(low.index_select(0, u_rows)).add_(start)  # (3, N) corner (low, low)
    upper = [frac / 3, frac]  # (3, N) each: weights of the upper neighbour on rows (with the mean's 1/3) and columns
    lower = [(1 - frac).div_(3), 1 - frac]
    rows = [w.index_select(0, v_rows) for w in (lower[0], upper[0])]  # (3, N) row weights of each plane: low, high
    columns = [w.index_select(0, u_rows) for w in (lower[1], upper[1])]
    n = points.shape[0]
    index = torch.empty(n, 3, 4, dtype=index_dtype, device=points.device)  # (N, plane, tap)
    weight = torch.empty(n, 3, 4, dtype=points.dtype, device=points.device)
    index_taps, weight_taps = index.permute(2, 1, 0), weight.permute(2, 1, 0)  # (tap, plane, N) views, written in place
    for r in range(2):
        for c in range(2):
            torch.add(base, r * side + c, out=index_taps[2 * r + c])
            torch.mul(rows[r], columns[c], out=weight_taps[2 * r + c])
    return index.reshape(n, 12), weight.reshape(n, 12)


def bordered_texels(planes: torch.Tensor) -> torch.Tensor:
    """Planes (Bp, 3, C, P, P) -> channel-last texel rows (Bp * 3 * (P + 3)^2, C) with a zero border (``BORDER``).

    Texel (i, j) of plane k of triplane b is row ((b * 3 + k) * (P + 3) + i + 1) * (P + 3) + j + 1.
    """
    bp, _, c, p, _ = planes.shape
    side = p + BORDER
    rows = planes.new_zeros(bp, 3, side, side, c)
    rows[:, :, 1 : p + 1, 1 : p + 1] = planes.permute(0, 1, 3, 4, 2)
    return rows.reshape(bp * 3 * side * side, c)


@dataclass(frozen=True)
class PlaneTexels:
    """Triplanes (Bp, 3, C, P, P) and their channel-last texel rows (bordered_texels), read by ``mean_at``."""

    planes: torch.Tensor  # (Bp, 3, C, P, P) as given: gradients flow to it
    texels: torch.Tensor | None  # (Bp * 3 * (P + 3)^2, C) detached channel-last bordered copy (large planes), else None
    box_warp: float
    eg3d_compatible: bool = False

    @classmethod
    def from_planes(
        cls, planes: torch.Tensor, box_warp: float, eg3d_compatible: bool = False, texel_rows: bool | None = None
    ) -> PlaneTexels:
        """``texel_rows``: read texel rows (True) or grid_sample each plane (False); None: texel rows unless the planes
        need gradients and are small (module docstring)."""
        bp, n_planes, c, h, w = planes.shape
        if n_planes != 3 or h != w:
            raise ValueError(f"expected square planes of shape (B, 3, C, P, P), got {tuple(planes.shape)}")
        if texel_rows is None:
            needs_grad = planes.requires_grad and torch.is_grad_enabled()
            texel_rows = not needs_grad or c * h * w * planes.element_size() > TEXEL_ROWS_ABOVE_BYTES
        texels = bordered_texels(planes.detach()) if texel_rows else None
        return cls(planes=planes, texels=texels, box_warp=box_warp, eg3d_compatible=eg3d_compatible)

    @property
    def half_side(self) -> float:
        """Half the side of the cube of the planes' outermost texel centres, world units: inside it a bilinear read
        blends the planes' own texels only; beyond, it blends in the zero padding (on one or two planes at a time)."""
        resolution = self.planes.shape[-1]
        return self.box_warp / 2 * (resolution - 1) / resolution

    def mean_at(self, points: torch.Tensor) -> torch.Tensor:
        """World points (B, N, 3) -> mean over the 3 planes of their bilinear features (B, N, C).

        ``B`` equals the planes' batch, or the planes' batch is 1 and serves every point set.
        Gradients reach the planes (not the points), as ``sample_planes(...).mean(1)``'s would.
        """
        b, n, _ = points.shape
        bp, _, _, p, _ = self.planes.shape
        if bp not in (1, b):
            raise ValueError(f"planes batch {bp} does not match points batch {b} (nor is it 1)")
        if self.texels is None:
            return self._grid_sampled_mean(points)
        rows = self.texels.shape[0]
        index_dtype = torch.int32 if rows < 2**31 else torch.long  # int32: half the index traffic (measured ~10% faster)
        index, weight = bilinear_taps(points.reshape(b * n, 3), self.box_warp, p, self.eg3d_compatible, index_dtype)
        if bp > 1:  # point set i reads triplane i
            first_rows = torch.arange(b, device=points.device, dtype=index_dtype) * (rows // bp)  # (B,)
            index = index + first_rows.repeat_interleave(n)[:, None]
        out = _PlaneMean.apply(self.planes, self.texels, index, weight.to(self.texels.dtype), points.detach(), self)
        return out.reshape(b, n, -1)  # (B, N, C)


    def _grid_sampled_mean(self, points: torch.Tensor) -> torch.Tensor:
        """Points (B, N, 3) -> (B, N, C): ``grid_sample`` on one plane at a time, summed in place."""
        b, n, _ = points.shape
        bp = self.planes.shape[0]
        sets = points.reshape(bp, b * n // bp, 3)  # a shared triplane reads all point sets as one
        grid = project_to_planes(sets, self.box_warp, self.eg3d_compatible).to(self.planes.dtype)  # (Bp, 3, N', 2)
        total = None
        for k in range(3):
            read = F.grid_sample(self.planes[:, k], grid[:, k, None], mode="bilinear", padding_mode="zeros",
                                 align_corners=False)  # (Bp, C, 1, N')
            total = read if total is None else total + read
        return (total[:, :, 0] / 3).transpose(1, 2).reshape(b, n, -1)  # (Bp, C, N') -> (B, N, C)


class _PlaneMean(torch.autograd.Function):
    """Forward: one ``embedding_bag`` of the 12 weighted texel rows per point. Backward: ``grid_sample``'s.

    ``embedding_bag``'s own backward sorts every index to reduce them (measured: it made a demo
    training step slower than ``grid_sample``'s backward), so the plane gradient is ``grid_sample``'s
    backward for the same points, with the output gradient / 3 on each plane: the gradient of
    ``sample_planes(...).mean(1)``.
    """

    @staticmethod
    def forward(ctx, planes, texels, index, weight, points, source: PlaneTexels) -> torch.Tensor:
        ctx.save_for_backward(points)
        ctx.source = source
        return F.embedding_bag(index, texels, per_sample_weights=weight, mode="sum")  # (B*N, C)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        points = ctx.saved_tensors[0].reshape(-1, 3)  # (B*N, 3)
        src: PlaneTexels = ctx.source
        bp, _, c, p, _ = src.planes.shape
        per = points.shape[0] // bp  # points read from each triplane
        grid = project_to_planes(points.reshape(bp, per, 3), src.box_warp, src.eg3d_compatible)  # (Bp, 3, per, 2)
        grid = grid.to(src.planes.dtype).reshape(bp * 3, 1, per, 2)
        out_grad = (grad / 3).reshape(bp, 1, per, c).transpose(2, 3).expand(-1, 3, -1, -1)  # (Bp, 3, C, per)
        out_grad = out_grad.reshape(bp * 3, c, 1, per)
        planes = src.planes.detach().reshape(bp * 3, c, p, p)  # read for its shape only (no grid gradient asked)
        grad_planes, _ = torch.ops.aten.grid_sampler_2d_backward(
            out_grad, planes, grid, 0, 0, False, [True, False])  # bilinear, zeros, align_corners=False
        return grad_planes.reshape(src.planes.shape), None, None, None, None, None
