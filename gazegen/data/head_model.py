"""Procedural gaze heads: identity parameters and an analytic, vectorised torch ray caster.

Conventions
-----------
- Heads are built in **millimetres** in the renderer's world frame (gazegen/geometry.py, EG3D
  axes: x to the subject's left, y up, z out of the face). The origin is the face centre: the
  midpoint of the two eyeball centres, which sit at ``(+-half_spacing, 0, 0)``; index 0 is the
  subject's **left** eye (world +x), index 1 the right eye. Cameras (25 numbers, world units)
  are scaled into millimetres with ``geometry.mm_per_world_unit``.
- Solid = (union of ellipsoids - eyelid openings) + eyeballs. An opening is an almond (the
  intersection of the upper- and lower-lid discs) extruded along z over a slab through the lids;
  through it one sees the eyeball or the opening's wall (lid margin, socket). Each eyeball lies
  inside its lid ellipsoid, so it shows only through its opening. Iris and pupil are caps around
  the eye's optical axis (a unit vector per eye and frame); the upper lid follows the eye's pitch.
- Only the openings and the iris move between frames: `cast_view` casts a camera once (every ray
  against every ellipsoid, and which rays pass near an opening); `shade_frames` redoes the CSG
  for those rays per frame, then lights all pixels (Lambert + ambient, one directional light, no
  shadows). One ray per pixel centre: masks and depth are exact per pixel; z-depth in mm of the
  normalised camera, 0 on the background. The pupil's albedo is exactly 0, every other >= 0.04.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gazegen.config import NormalisationConfig
from gazegen.geometry import mm_per_world_unit
from gazegen.rendering.rays import camera_rays

BACKGROUND, SOCKET, LEFT_EYE, RIGHT_EYE = 0, 1, 2, 3  # part codes; ellipsoid k is FIRST_ELLIPSOID + k
FIRST_ELLIPSOID = 10
INF = math.inf
UPPER_LID_FOLLOW, LOWER_LID_FOLLOW = 0.6, 0.2  # lid shift per mm of the pupil's rise (r * sin pitch)
MIN_ALBEDO = 0.04  # every albedo channel but the pupil's, so only pupils render as exact black
BODY_PARTS = ("torso",)  # ellipsoids drawn (with depth) but outside the face mask


@dataclass(frozen=True)
class Ellipsoids:
    """K ellipsoids, each tilted about world x: local y maps to world (0, cos tilt, sin tilt)."""

    names: tuple[str, ...]
    centres: np.ndarray  # (K, 3) mm, world
    radii: np.ndarray  # (K, 3) mm, semi-axes along the local axes
    tilts: np.ndarray  # (K,) radians



@dataclass(frozen=True)
class Eyes:
    """Both eyes (mirror images). Lengths in mm, angles in radians."""

    half_spacing: float  # eyeball centres at (+-half_spacing, 0, 0)
    radius: float  # eyeball radius
    lid_thickness: float  # the lid sphere's radius is radius + lid_thickness
    half_width: float  # half the almond's corner-to-corner length
    upper: float  # height of the upper lid arc above the corner chord, eye looking level
    lower: float  # depth of the lower lid arc below the chord
    tilt: float  # canthal tilt: outer corner up for tilt > 0
    offset: tuple[float, float]  # almond centre relative to the eyeball centre: (outward, up)
    iris_radius: float  # chord radius of the iris cap
    pupil_radius: float  # chord radius of the pupil cap
    iris_colour: tuple[float, float, float]
    sclera_colour: tuple[float, float, float]
    iris_stripes: int  # radial stripes in the iris texture

    @property
    def centres(self) -> np.ndarray:
        """(2, 3) mm: the subject's left eye (world +x), then the right eye."""
        return np.array([[self.half_spacing, 0.0, 0.0], [-self.half_spacing, 0.0, 0.0]])

    @property
    def slab(self) -> tuple[float, float]:
        """z range of the openings: from the eyeball centres to in front of the lids."""
        return 0.0, self.radius + self.lid_thickness + 1.0


@dataclass(frozen=True)
class Identity:
    """Everything that makes one subject look like itself."""

    shape: Ellipsoids
    eyes: Eyes
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    lips: tuple[float, float, float]
    clothes: tuple[float, float, float]
    brow: tuple[float, float, float, float]  # height above the eye centre, half length, thickness, arch (mm)
    mouth: tuple[float, float]  # height (y) and half width of the mouth, mm

    def part(self, name: str) -> int:
        """Part code of an ellipsoid by name (the `part` map of `HeadRender`)."""
        return FIRST_ELLIPSOID + self.shape.names.index(name)


@dataclass(frozen=True)
class Lighting:
    """Per-frame light and background (G frames)."""

    direction: torch.Tensor  # (G, 3) unit vectors toward the light, world frame
    ambient: torch.Tensor  # (G,)
    diffuse: torch.Tensor  # (G,)
    tint: torch.Tensor  # (G, 3) light colour
    background: torch.Tensor  # (G, 2, 3) background colour at the top and bottom rows


@dataclass(frozen=True)
class ViewCast:
    """One camera cast against the head without openings, plus what the rays near the eyes need."""

    resolution: int
    depth: torch.Tensor  # (N,) float32 mm z-depth, 0 = background
    part: torch.Tensor  # (N,) uint8 part codes
    normal: torch.Tensor  # (N, 3)
    albedo: torch.Tensor  # (N, 3)
    eye_rays: torch.Tensor  # (Ne,) int64 rays that may pass through an opening
    origin: torch.Tensor  # (Ne, 3) mm, each eye ray's point nearest the world origin
    direction: torch.Tensor  # (Ne, 3) unit, world
    t_offset: torch.Tensor  # (Ne,) float64 mm from the camera centre to `origin`
    z_per_t: torch.Tensor  # (Ne,) float64 camera-axis depth per mm along the ray
    t_in: torch.Tensor  # (Ne, K) entry into each ellipsoid beyond `origin`, inf = miss
    t_out: torch.Tensor  # (Ne, K) exit, -inf = miss
    t_eyeball: torch.Tensor  # (Ne, 2) entry into each eyeball, inf = miss


@dataclass(frozen=True)
class HeadRender:
    """G rendered frames of one camera."""

    rgb: torch.Tensor  # (G, H, W, 3) float32 in [0, 1]
    depth: torch.Tensor  # (G, H, W) float32 mm, 0 = background
    part: torch.Tensor  # (G, H, W) uint8 part codes
    face_mask: torch.Tensor  # (G, H, W) bool: the head's surface, eyes included, body (BODY_PARTS) excluded

    @property
    def left_eye_mask(self) -> torch.Tensor:  # (G, H, W) bool: the subject's left eyeball
        return self.part == LEFT_EYE

    @property
    def right_eye_mask(self) -> torch.Tensor:
        return self.part == RIGHT_EYE

    def image_uint8(self) -> torch.Tensor:  # (G, H, W, 3) uint8 RGB, rounded half up
        return (self.rgb * 255.0 + 0.5).to(torch.uint8)


# --------------------------------------------------------------------------- eye geometry


def eye_axes(identity: Identity, target: np.ndarray, converge: bool = True) -> np.ndarray:
    """(G, 3) gaze targets, mm world -> (G, 2, 3) unit optical axes of the left and right eye.

    Converging eyes point at the target; parallel eyes both point from the face centre to it.
    """
    target = np.asarray(target, dtype=np.float64)
    if not converge:
        axis = target / np.linalg.norm(target, axis=-1, keepdims=True)
        return np.repeat(axis[:, None], 2, axis=1)
    v = target[:, None, :] - identity.eyes.centres[None]  # (G, 2, 3)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def lid_circles(eyes: Eyes, axes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, 2, 3) eye axes -> upper/lower lid disc centres (G, 2, 2, 2) xy mm and radii (G, 2, 2).

    Axes: frame, eye (left, right), disc (upper lid, lower lid)[, xy]. The almond is the
    intersection of the two discs; the upper lid rises and falls with the eye's pitch.
    """
    rise = eyes.radius * axes[..., 1]  # (G, 2): how far the pupil rises, r sin(pitch)
    w = eyes.half_width
    up = (eyes.upper + UPPER_LID_FOLLOW * rise).clamp(1.5, 0.9 * w)
    lo = (eyes.lower - LOWER_LID_FOLLOW * rise).clamp(1.0, 0.9 * w)
    sign = axes.new_tensor([1.0, -1.0])  # left eye at +x; "outward" is away from the nose
    ct, st = math.cos(eyes.tilt), math.sin(eyes.tilt)
    mid = torch.stack([sign * (eyes.half_spacing + eyes.offset[0]), torch.full_like(sign, eyes.offset[1])], -1)
    normal = torch.stack([-sign * st, torch.full_like(sign, ct)], -1)  # (2, 2) up, perpendicular to the chord
    rho_up, rho_lo = (w * w + up * up) / (2 * up), (w * w + lo * lo) / (2 * lo)  # (G, 2)
    centre_up = mid + normal * (up - rho_up)[..., None]  # (G, 2, 2)
    centre_lo = mid - normal * (lo - rho_lo)[..., None]
    return torch.stack([centre_up, centre_lo], 2), torch.stack([rho_up, rho_lo], 2)


def opening_bounds(eyes: Eyes) -> tuple[np.ndarray, float]:
    """Bounding spheres of both openings over every lid position: centres (2, 3) mm and a radius."""
    z0, z1 = eyes.slab
    centres = np.array([[s * (eyes.half_spacing + eyes.offset[0]), eyes.offset[1], (z0 + z1) / 2] for s in (1, -1)])
    radius = math.sqrt(eyes.half_width**2 + (0.9 * eyes.half_width) ** 2 + ((z1 - z0) / 2) ** 2) + 0.5
    return centres, radius


# --------------------------------------------------------------------------- intersections


def _local(v: torch.Tensor, tilt: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """World vectors (..., 3) -> components in an ellipsoid's frame (tilted by `tilt` about x)."""
    c, s = (math.cos(tilt), math.sin(tilt)) if isinstance(tilt, float) else (tilt.cos(), tilt.sin())
    x, y, z = v.unbind(-1)
    return x, c * y + s * z, c * z - s * y


def ellipsoid_intervals(o: torch.Tensor, d: torch.Tensor, shape: Ellipsoids) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays o, d (N, 3) -> entry and exit t (N, K) for every ellipsoid; (inf, -inf) on a miss."""
    t_in, t_out = [], []
    for centre, radii, tilt in zip(shape.centres.tolist(), shape.radii.tolist(), shape.tilts.tolist()):
        oc = [u / r for u, r in zip(_local(o - o.new_tensor(centre), tilt), radii)]  # unit-sphere space
        dc = [u / r for u, r in zip(_local(d, tilt), radii)]
        a = dc[0] * dc[0] + dc[1] * dc[1] + dc[2] * dc[2]  # (N,)
        tc = -(oc[0] * dc[0] + oc[1] * dc[1] + oc[2] * dc[2]) / a  # closest approach
        q = [u + tc * v for u, v in zip(oc, dc)]
        disc = (1.0 - (q[0] * q[0] + q[1] * q[1] + q[2] * q[2])) / a  # stable: no difference of large squares
        hit = disc > 0
        s = disc.clamp_min(0).sqrt()
        t_in.append(torch.where(hit, tc - s, INF))
        t_out.append(torch.where(hit, tc + s, -INF))
    return torch.stack(t_in, -1), torch.stack(t_out, -1)


def ellipsoid_normals(p: torch.Tensor, k: torch.Tensor, shape: Ellipsoids) -> torch.Tensor:
    """Points p (..., 3) on ellipsoids k (...) -> outward unit normals (..., 3)."""
    centres, radii, tilt = p.new_tensor(shape.centres)[k], p.new_tensor(shape.radii)[k], p.new_tensor(shape.tilts)[k]
    x, y, z = (u / r**2 for u, r in zip(_local(p - centres, tilt), radii.unbind(-1)))  # gradient, local frame
    c, s = tilt.cos(), tilt.sin()
    n = torch.stack([x, c * y - s * z, s * y + c * z], -1)
    return n / n.norm(dim=-1, keepdim=True)


def disc_intervals(o: torch.Tensor, d: torch.Tensor, centre: torch.Tensor, rho: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays (Ne, 3) against infinite z-cylinders, centres (..., 2) and radii (...) -> t (..., Ne) in and out."""
    dxy = d[:, :2]
    oc = o[:, :2] - centre[..., None, :]  # (..., Ne, 2)
    a = (dxy * dxy).sum(-1).clamp_min(1e-12)  # (Ne,)
    tc = -(oc * dxy).sum(-1) / a
    q = oc + tc[..., None] * dxy
    disc = (rho[..., None] ** 2 - (q * q).sum(-1)) / a
    hit = disc > 0
    s = disc.clamp_min(0).sqrt()
    return torch.where(hit, tc - s, INF), torch.where(hit, tc + s, -INF)


def slab_interval(o: torch.Tensor, d: torch.Tensor, z0: float, z1: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays (Ne, 3) -> t (Ne,) at which they are inside z0 <= z <= z1."""
    dz = torch.where(d[:, 2].abs() < 1e-9, torch.full_like(d[:, 2], 1e-9), d[:, 2])
    ta, tb = (z0 - o[:, 2]) / dz, (z1 - o[:, 2]) / dz
    return torch.minimum(ta, tb), torch.maximum(ta, tb)


# --------------------------------------------------------------------------- surfaces


def skin_albedo(identity: Identity, p: torch.Tensor, part: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Points p (M, 3) mm on ellipsoid parts (M,) with normals (M, 3) -> albedo (M, 3)."""
    skin, hair, lips = (p.new_tensor(c) for c in (identity.skin, identity.hair, identity.lips))
    x, y, z = p.unbind(-1)
    out = skin.expand_as(p).clone()
    front = z > -5.0
    cheek = torch.exp(-((x.abs() - 38.0) ** 2 + (y + 32.0) ** 2) / (2 * 14.0**2)) * front
    out = out * (1 - 0.12 * cheek[:, None]) + p.new_tensor([0.85, 0.35, 0.35]) * 0.12 * cheek[:, None]
    height, half, thick, arch = identity.brow
    bx = (x.abs() - identity.eyes.half_spacing - 2.0) / half  # -1 (inner end) .. 1 (outer end)
    by = y - (height + arch * (1 - bx**2))
    brow = (bx.abs() < 1) & (by.abs() < thick * (1.1 - 0.45 * (bx + 1) / 2)) & front
    out = torch.where(brow[:, None], hair * 1.1 + 0.02, out)
    my, mw = identity.mouth
    lip = ((x / mw) ** 2 + ((y - my) / 6.0) ** 2 < 1) & (z > 0)
    out = torch.where(lip[:, None], lips, out)
    slit = (x.abs() < 0.9 * mw) & ((y - my + 0.6 * (x / mw) ** 2).abs() < 0.9) & (z > 0)
    out = torch.where(slit[:, None], lips * 0.35, out)
    nostril = (part == identity.part("nose_tip")) & (n[:, 1] < -0.45) & ((x.abs() - 5.0).abs() < 2.8)
    out = torch.where(nostril[:, None], skin * 0.25, out)
    out = torch.where((part == identity.part("hair"))[:, None], hair, out)
    ear = (part == identity.part("ear_l")) | (part == identity.part("ear_r"))
    out = torch.where(ear[:, None], skin * p.new_tensor([1.0, 0.9, 0.88]), out)
    out = torch.where((part == identity.part("neck"))[:, None], skin * 0.72, out)  # in the chin's shadow
    out = torch.where((part == identity.part("torso"))[:, None], p.new_tensor(identity.clothes), out)
    return out.clamp(MIN_ALBEDO, 1.0)


def eyeball_albedo(eyes: Eyes, p: torch.Tensor, eye: torch.Tensor, axes: torch.Tensor) -> torch.Tensor:
    """Points p (G, M, 3) on eyeballs `eye` (G, M) in {0, 1}, axes (G, 2, 3) -> albedo (G, M, 3)."""
    centre = p.new_tensor(eyes.centres)[eye]  # (G, M, 3)
    a = torch.gather(axes, 1, eye[..., None].expand(-1, -1, 3))  # (G, M, 3)
    q = (p - centre) / eyes.radius
    cos = (q * a).sum(-1)
    ring = (1 - cos.clamp(max=1.0) ** 2).sqrt() * eyes.radius / eyes.iris_radius  # 0 centre .. 1 iris edge
    e1 = torch.nn.functional.normalize(torch.cross(a, p.new_tensor([0.0, 1.0, 0.0]).expand_as(a), dim=-1), dim=-1)
    phi = torch.atan2((q * torch.cross(a, e1, dim=-1)).sum(-1), (q * e1).sum(-1))
    stripes = 0.9 + 0.12 * torch.sin(eyes.iris_stripes * phi) + 0.15 * (ring < 0.55)
    shade = torch.where(ring > 0.84, 0.55, stripes)
    iris = (p.new_tensor(eyes.iris_colour) * shade[..., None]).clamp(MIN_ALBEDO, 1.0)
    in_iris = (cos >= math.sqrt(1 - (eyes.iris_radius / eyes.radius) ** 2))[..., None]
    in_pupil = (cos >= math.sqrt(1 - (eyes.pupil_radius / eyes.radius) ** 2))[..., None]
    out = torch.where(in_iris, iris, p.new_tensor(eyes.sclera_colour))
    return torch.where(in_pupil, torch.zeros_like(out), out)


# --------------------------------------------------------------------------- casting


def cast_view(identity: Identity, camera: torch.Tensor, norm: NormalisationConfig) -> ViewCast:
    """Cast one camera's (25,) pixel rays against the head without openings (frame-independent)."""
    rays = camera_rays(camera.to(torch.float64)[None], norm.resolution)
    o64 = rays.origins[0] * mm_per_world_unit(norm)  # (N, 3) mm
    d64 = rays.directions[0]
    t_offset = -(o64 * d64).sum(-1)  # (N,) to the point nearest the origin: keeps float32 exact
    o, d = (o64 + t_offset[:, None] * d64).float(), d64.float()
    t_in, t_out = ellipsoid_intervals(o, d, identity.shape)  # (N, K)
    t, k = t_in.min(-1)
    hit = torch.isfinite(t)
    p = o + torch.where(hit, t, 0.0)[:, None] * d
    normal = ellipsoid_normals(p, k, identity.shape)
    part = torch.where(hit, FIRST_ELLIPSOID + k, BACKGROUND)
    albedo = skin_albedo(identity, p, part, normal)
    depth = torch.where(hit, (t.double() + t_offset) * rays.z_per_t[0, :, 0], 0.0).float()
    centres, radius = opening_bounds(identity.eyes)
    oc = o[:, None, :] - o.new_tensor(centres)  # (N, 2, 3)
    miss = (oc - (oc * d[:, None]).sum(-1, keepdim=True) * d[:, None]).norm(dim=-1)  # (N, 2) ray-to-centre distance
    idx = torch.nonzero((miss < radius).any(-1))[:, 0]
    balls = Ellipsoids(("eye_l", "eye_r"), identity.eyes.centres, np.full((2, 3), identity.eyes.radius), np.zeros(2))
    return ViewCast(
        resolution=norm.resolution, depth=depth, part=part.to(torch.uint8), normal=normal, albedo=albedo, eye_rays=idx,
        origin=o[idx], direction=d[idx], t_offset=t_offset[idx], z_per_t=rays.z_per_t[0, idx, 0],
        t_in=t_in[idx], t_out=t_out[idx], t_eyeball=ellipsoid_intervals(o[idx], d[idx], balls)[0],
    )


def _opening(eyes: Eyes, o: torch.Tensor, d: torch.Tensor, axes: torch.Tensor):
    """Openings along eye rays (Ne, 3) for frames' axes (G, 2, 3) -> entry, exit (G, 2, Ne) and exit normals (G, 2, Ne, 3)."""
    centres, rho = lid_circles(eyes, axes)  # (G, 2, 2, 2), (G, 2, 2)
    c_in, c_out = disc_intervals(o, d, centres, rho)  # (G, 2, 2, Ne)
    s_in, s_out = slab_interval(o, d, *eyes.slab)  # (Ne,)
    entry = torch.maximum(c_in.amax(2), s_in)  # (G, 2, Ne)
    exits = torch.cat([c_out, s_out.expand_as(c_out[:, :, :1])], 2)  # (G, 2, 3, Ne)
    exit, which = exits.min(2)
    empty = entry >= exit
    entry, exit = torch.where(empty, INF, entry), torch.where(empty, -INF, exit)
    p = o + exit.clamp(-1e4, 1e4)[..., None] * d  # (G, 2, Ne, 3)
    centre = torch.gather(centres, 2, which.clamp(max=1)[..., None].expand(-1, -1, -1, 2))  # (G, 2, Ne, 2)
    radial = torch.nn.functional.pad((p[..., :2] - centre), (0, 1))
    radial = radial / radial.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    axial = torch.zeros_like(radial)
    axial[..., 2] = torch.sign(d[:, 2])
    outward = torch.where((which == 2)[..., None], axial, radial)
    return entry, exit, -outward  # the wall faces into the opening


def _eye_region(identity: Identity, view: ViewCast, axes: torch.Tensor):
    """Full CSG along the eye rays for G frames -> depth, part, normal, albedo of shape (G, Ne[, 3])."""
    o, d = view.origin, view.direction  # (Ne, 3)
    entry, exit, wall_normal = _opening(identity.eyes, o, d, axes)
    x = view.t_in[None].expand(axes.shape[0], -1, -1)  # (G, Ne, K) try each ellipsoid's entry ...
    src = torch.zeros_like(x, dtype=torch.int64)
    for e in (0, 1, 0):  # ... and skip through the openings (disjoint intervals: three passes suffice)
        lo, hi = entry[:, e, :, None], exit[:, e, :, None]
        inside = (x >= lo) & (x < hi)
        x, src = torch.where(inside, hi, x), torch.where(inside, e + 1, src)
    x = torch.where(x < view.t_out[None], x, INF)  # left the ellipsoid before leaving the opening
    t, k = x.min(-1)  # (G, Ne)
    src = torch.gather(src, -1, k[..., None])[..., 0]
    t_ball, eye = view.t_eyeball.min(-1)  # (Ne,) eyeballs do not move: only their texture does
    on_ball = t_ball < t
    t = torch.where(on_ball, t_ball, t)
    part = torch.where(src > 0, SOCKET, FIRST_ELLIPSOID + k)
    part = torch.where(on_ball, LEFT_EYE + eye, torch.where(torch.isfinite(t), part, BACKGROUND))
    p = o + torch.where(torch.isfinite(t), t, 0.0)[..., None] * d  # (G, Ne, 3)
    normal = ellipsoid_normals(p, k, identity.shape)
    wall = torch.where((src == 1)[..., None], wall_normal[:, 0], wall_normal[:, 1])
    normal = torch.where((src > 0)[..., None], wall, normal)
    eye = eye.expand_as(t)
    ball_normal = (p - p.new_tensor(identity.eyes.centres)[eye]) / identity.eyes.radius
    normal = torch.where(on_ball[..., None], ball_normal, normal)
    skin = skin_albedo(identity, p.reshape(-1, 3), part.reshape(-1), normal.reshape(-1, 3)).reshape(p.shape)
    socket = (p.new_tensor(identity.skin) * p.new_tensor([0.7, 0.42, 0.42])).clamp_min(MIN_ALBEDO)
    albedo = torch.where((src > 0)[..., None], socket, skin)
    albedo = torch.where(on_ball[..., None], eyeball_albedo(identity.eyes, p, eye, axes), albedo)
    depth = torch.where(part != BACKGROUND, (t.double() + view.t_offset) * view.z_per_t, 0.0).float()
    return depth, part.to(torch.uint8), normal, albedo


def _lit(albedo: torch.Tensor, normal: torch.Tensor, light: Lighting) -> torch.Tensor:
    """Albedo and normals (N, 3) or (G, N, 3) -> Lambert + ambient colour (G, N, 3)."""
    direction = light.direction.float()  # (G, 3)
    lambert = (normal * direction[:, None, :]).sum(-1) if normal.dim() == 3 else direction @ normal.T  # (G, N)
    shade = light.ambient.float()[:, None] + light.diffuse.float()[:, None] * lambert.clamp_min(0)
    return albedo * shade[..., None] * light.tint.float()[:, None, :]


def shade_frames(identity: Identity, view: ViewCast, axes: torch.Tensor, light: Lighting) -> HeadRender:
    """Render G frames (eye axes (G, 2, 3), lighting) of one cast camera."""
    g, n, res = axes.shape[0], view.depth.shape[0], view.resolution
    rgb = _lit(view.albedo, view.normal, light)  # (G, N, 3) the head without openings ...
    depth = view.depth.expand(g, n).clone()  # (G, N)
    part = view.part.expand(g, n).clone()
    if len(view.eye_rays):  # ... then the rays that may pass an opening, per frame
        idx = view.eye_rays
        depth[:, idx], part[:, idx], normal, albedo = _eye_region(identity, view, axes.to(torch.float32))
        rgb[:, idx] = _lit(albedo, normal, light)
    hit = part != BACKGROUND
    row = ((torch.arange(res) + 0.5) / res)[None, :, None, None]  # (1, H, 1, 1) 0 top .. 1 bottom
    bg = light.background.float()[:, None, None]  # (G, 1, 1, 2, 3)
    background = bg[..., 0, :] * (1 - row) + bg[..., 1, :] * row  # (G, H, 1, 3)
    rgb = torch.where(hit.reshape(g, res, res, 1), rgb.reshape(g, res, res, 3), background).clamp(0.0, 1.0)
    body = torch.tensor([identity.part(name) for name in BODY_PARTS if name in identity.shape.names], dtype=part.dtype)
    face = hit & ~torch.isin(part, body)
    return HeadRender(rgb=rgb, depth=depth.reshape(g, res, res), part=part.reshape(g, res, res), face_mask=face.reshape(g, res, res))


def render(identity: Identity, camera: torch.Tensor, norm: NormalisationConfig, axes: torch.Tensor, light: Lighting) -> HeadRender:
    """One camera (25,), G frames: `cast_view` then `shade_frames`."""
    return shade_frames(identity, cast_view(identity, camera, norm), axes, light)
