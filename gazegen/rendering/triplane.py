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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AxisPair = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

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
