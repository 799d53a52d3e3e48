"""LiveGaze: single-image, triplane-based, 3D-aware gaze redirection (the paper's Fig. 2).

    I_s ──E_h──> F_h ──CrossAttention(F_h, E_g(g))──> F_app ─┐
        └─E_l──> F_geo ───────────────────────────────────────┴─E_tri─> T_g ──G(T_g, c)──> I_g, D_g

Three stages, so that a synthesis grid pays for each only as often as it must:

* ``encode(image, camera)``: once per source image -> ``SourceFeatures`` (F_h, F_geo; the source
  camera, needed by models that lift E_tri's output through it, ``ModelConfig.lift_samples``, or
  read the source's pixels or its predicted surface per sample point, ``ModelConfig.pixel_channels``,
  ``ModelConfig.surface_bands``);
* ``redirect(features, gaze_head)``: once per gaze -> triplane T_g (B, 3, C, P, P);
* ``render(triplane, cameras, source=features)``: once per view; a triplane of batch 1 serves any
  number of cameras -> ``LiveGazeOutput``. ``source`` is needed by models with pixel features or
  surface bands, and with ``render.source_background`` it holds the plate every view is
  composited onto (the source's background, its head filled; gazegen/models/background.py),
  made once by ``encode``.

``forward(image, gaze_head, cameras, source_camera)`` chains the three. Conventions (docs/design.md): images are
float NCHW RGB in [-1, 1]; ``gaze_head`` is (B, 2) pitch/yaw radians in the head frame;
cameras are EG3D's (B, 25); depth is z-depth in world units. The renderer (EG3D's, in
gazegen/rendering/) is stateless apart from the decoder MLP held here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from gazegen.config import ModelConfig
from gazegen.imaging import resize_tensor
from gazegen.models.background import background_plate, composite
from gazegen.models.encoders import HighFrequencyEncoder, LowFrequencyEncoder, append_pixel_coordinates
from gazegen.models.gaze_fusion import GazeCrossAttention, GazeEncoder
from gazegen.models.init import initialise_from_scratch_
from gazegen.models.mean_planes import MeanPlanes
from gazegen.models.pixel_features import EyeZone, PixelFeatures, SourcePixels
from gazegen.models.plane_lifting import PlaneLifting
from gazegen.models.source_detail import SourceDetail
from gazegen.models.source_surface import SourceSurface, SurfaceBands
from gazegen.models.superres import SuperResolution
from gazegen.models.triplane_head import GeometryTerms, TriplaneHead
from gazegen.rendering.decoder import TriplaneDecoder
from gazegen.rendering.renderer import RenderOutput, render_triplane
from gazegen.rendering.triplane import plane_axes


@dataclass(frozen=True)
class SourceFeatures:
    """What ``encode`` extracts from source images, independent of gaze and camera."""

    high: torch.Tensor  # (B, C_h, P, P) F_h, E_h's appearance features
    geometry: torch.Tensor  # (B, C_geo, P, P) F_geo, E_l's geometry features
    tri_geometry: GeometryTerms  # E_tri's F_geo-only terms (triplane_head.py), computed once per source
    camera: torch.Tensor | None = None  # (B, 25) the source cameras (models with plane lifting)
    image: torch.Tensor | None = None  # (B, 3, P, P) the source image at the planes' side (models with plane lifting)
    pixels: SourcePixels | None = None  # the source's pixel-aligned feature map (models with pixel features)
    surface: SourceSurface | None = None  # the source's predicted z-depth map (models with surface bands)
    picture: torch.Tensor | None = None  # (B, 3, S_out, S_out) the source image at the output side (models with source detail)
    plate: torch.Tensor | None = None  # (B, 3, S_out, S_out) the source's background, its head filled (render.source_background)


@dataclass(frozen=True)
class LiveGazeOutput:
    """Renderings of B views."""

    image: torch.Tensor  # (B, 3, S, S) the output image in [-1, 1] (after super-resolution)
    image_raw: torch.Tensor  # (B, 3, R, R) the low-resolution volume rendering in [-1, 1]
    depth: torch.Tensor  # (B, 1, R, R) z-depth along the camera axis, world units
    alpha: torch.Tensor  # (B, 1, R, R) opacity in [0, 1]
    triplane: torch.Tensor  # (B or 1, 3, C, P, P) the triplane the views were rendered from
    source_depth: torch.Tensor | None = None  # (B or 1, 1, P, P) the sources' predicted z-depth, world units (surface bands)


def _summed(terms: list, points: torch.Tensor) -> torch.Tensor:
    """The sum of several per-point terms at world points (B, N, 3): (B, N, C_plane)."""
    return sum(term(points) for term in terms)


def _check_shape(name: str, tensor: torch.Tensor, expected: tuple[int | None, ...]) -> None:
    """Raise a ValueError naming ``name`` unless ``tensor`` has ``expected`` shape (None: any size)."""
    ok = tensor.ndim == len(expected) and all(e is None or e == s for e, s in zip(expected, tensor.shape))
    if not ok:
        want = ", ".join("*" if e is None else str(e) for e in expected)
        raise ValueError(f"{name} must have shape ({want}), got {tuple(tensor.shape)}")


class LiveGaze(nn.Module):
    """The LiveGaze network built from a ``ModelConfig``."""

    config_class = ModelConfig  # a checkpoint rebuilds it as LiveGaze(config) (gazegen/checkpoint.py)
    format_version = 1  # of its checkpoints' config.json and state-dict layout

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        in_channels = 5 if cfg.coord_channels else 3
        self.high_encoder = HighFrequencyEncoder(in_channels, cfg.high_hidden, cfg.high_channels, cfg.high_depth)
        self.low_encoder = LowFrequencyEncoder(
            in_channels,
            backbone_channels=cfg.backbone_channels,
            backbone_blocks=cfg.backbone_blocks,
            aspp_channels=cfg.aspp_channels,
            aspp_rates=cfg.aspp_rates,
            aspp_dropout=cfg.aspp_dropout,
            embed_dim=cfg.geo_embed_dim,
            depth=cfg.geo_depth,
            heads=cfg.geo_heads,
            mlp_ratio=cfg.mlp_ratio,
            hidden=cfg.geo_hidden,
            channels=cfg.geo_channels,
        )
        self.gaze_encoder = GazeEncoder(cfg.gaze_tokens, cfg.high_channels, cfg.gaze_frequencies, cfg.gaze_hidden)
        self.gaze_fusion = GazeCrossAttention(cfg.high_channels, cfg.fusion_heads)
        self.triplane_head = TriplaneHead(
            cfg.high_channels,
            cfg.geo_channels,
            channels=cfg.tri_channels,
            embed_dim=cfg.tri_embed_dim,
            depth=cfg.tri_depth,
            heads=cfg.tri_heads,
            mlp_ratio=cfg.mlp_ratio,
            sr_ratio=cfg.tri_sr_ratio,
            out_channels=cfg.lift_channels if cfg.lift_samples else 3 * cfg.render.plane_channels,
        )
        r = cfg.render
        self.lifting = (
            PlaneLifting(cfg.lift_channels + 3, cfg.lift_samples, cfg.lift_hidden, r.plane_channels, r.plane_resolution,
                         r.box_warp, plane_axes(cfg.eg3d_plane_axes))
            if cfg.lift_samples else None
        )
        eyes = EyeZone(cfg.pixel_eye_centre, cfg.pixel_eye_radius, cfg.pixel_eye_falloff)  # never read from the source
        self.pixels = PixelFeatures(cfg.pixel_channels, cfg.pixel_hidden, r.plane_channels, eyes) if cfg.pixel_channels else None
        self.detail = SourceDetail(cfg.detail_hidden, eyes) if cfg.detail_hidden else None
        self.surface = (SurfaceBands(cfg.geo_channels, cfg.surface_hidden, cfg.surface_bands, cfg.surface_reach, r.plane_channels)
                        if cfg.surface_bands else None)
        self.mean = (MeanPlanes(r.plane_channels, r.plane_resolution, r.box_warp, cfg.mean_planes_margin, cfg.eg3d_plane_axes)
                     if cfg.mean_planes else None)
        self.decoder = TriplaneDecoder.from_config(cfg.render)
        self.superres = SuperResolution(
            cfg.render.feature_channels, cfg.sr_channels, cfg.style_dim, cfg.output_resolution, cfg.sr_antialias
        )
        initialise_from_scratch_(  # variance-preserving (models/init.py); the super-resolution keeps StyleGAN2's
            [self.high_encoder, self.low_encoder, self.gaze_encoder, self.gaze_fusion, self.triplane_head,
             *(m for m in (self.lifting, self.pixels, self.detail, self.surface) if m is not None)],
            self.decoder,
            keep=(self.gaze_fusion.proj_out,),
        )
        for branch in (self.pixels, self.detail, self.surface):
            if branch is not None:
                branch.reset_output_()  # adds nothing at the start (pixel_features.py, source_detail.py, source_surface.py)

    def encode(self, image: torch.Tensor, camera: torch.Tensor | None = None) -> SourceFeatures:
        """Source images (B, 3, S_in, S_in) in [-1, 1] -> F_h and F_geo, each (B, C, S_in/2, S_in/2).

        ``camera`` (B, 25): the source images' cameras, required when the model lifts through them
        or reads the source's pixels.
        """
        s = self.cfg.image_resolution
        _check_shape("image", image, (None, 3, s, s))
        if any(m is not None for m in (self.lifting, self.pixels, self.detail, self.surface)):
            if camera is None:
                raise ValueError("this model projects into the source camera (lift_samples, pixel_channels, detail_hidden "
                                 "or surface_bands > 0): pass the source images' cameras (B, 25) to encode")
            _check_shape("source camera", camera, (image.shape[0], 25))
        x = append_pixel_coordinates(image) if self.cfg.coord_channels else image  # (B, 5 or 3, S, S)
        high, geometry = self.high_encoder(x), self.low_encoder(x)  # (B, C_h, P, P), (B, C_geo, P, P)
        small = F.avg_pool2d(image, 2) if self.lifting is not None else None  # (B, 3, S/2, S/2): lifted beside E_tri's output
        pixels = self.pixels(image, camera) if self.pixels is not None else None  # (B, C_plane, S, S) and the cameras
        surface = self.surface(geometry, camera) if self.surface is not None else None  # (B, 1, P, P) and the cameras
        plate_needed = self.cfg.render.source_background and not self.training
        picture = resize_tensor(image, self.cfg.output_resolution) if self.detail is not None or plate_needed else None
        features = SourceFeatures(high=high, geometry=geometry, tri_geometry=self.triplane_head.geometry_terms(geometry),
                                  camera=camera, image=small, pixels=pixels, surface=surface, picture=picture)
        if plate_needed:
            # not in training: the losses cover the head, and the plate changes only what the render leaves
            # transparent (the background, the silhouette's soft edge); making it costs 13% of a demo step
            features = replace(features, plate=self._plate(features))
        return features

    @torch.no_grad()
    def _plate(self, features: SourceFeatures) -> torch.Tensor:
        """The sources' background plates (B, 3, S_out, S_out): the head where the model renders it from the source
        camera, for the gaze straight ahead (the silhouette hardly depends on the gaze; a fixed gaze keeps ``encode``
        independent of the grid), filled in (models/background.py)."""
        if features.camera is None:
            raise ValueError("render.source_background finds the source's head by rendering it from the source camera: "
                             "pass the source images' cameras (B, 25) to encode")
        picture = features.picture  # (B, 3, S_out, S_out)
        triplane = self.redirect(features, picture.new_zeros(picture.shape[0], 2))  # (B, 3, C, P, P)
        alpha = self._volume(triplane, features.camera, features, None, training=False, coarse=True).alpha  # (B, 1, R/2, R/2)
        return background_plate(picture, alpha)

    def redirect(self, features: SourceFeatures, gaze_head: torch.Tensor) -> torch.Tensor:
        """Features of B or 1 sources and gazes (B, 2) in the head frame -> triplanes (B, 3, C, P, P).

        Features of batch 1 are shared by all B gazes (one source, many gazes).
        """
        _check_shape("gaze_head", gaze_head, (None, 2))
        tokens = self.gaze_encoder(gaze_head)  # (B, K, C_h)
        appearance = self.gaze_fusion(features.high, tokens)  # (B, C_h, P, P) F_app
        b = appearance.shape[0]
        out = self.triplane_head.from_terms(appearance, features.tri_geometry.expand(b))  # (B, C_out, P, P), F_geo's terms from encode
        if self.lifting is not None:  # E_tri's map and the source's own pixels, carried onto the planes
            lifted = torch.cat([out, features.image.expand(b, -1, -1, -1)], 1)  # (B, C_out + 3, P, P)
            return self.lifting(lifted, features.camera.expand(b, -1))  # (B, 3, C_plane, P, P)
        return out.reshape(b, 3, self.cfg.render.plane_channels, *out.shape[-2:])  # Live3D: read plane-major

    def render(
        self, triplane: torch.Tensor, cameras: torch.Tensor, *, source: SourceFeatures | None = None,
        generator: torch.Generator | None = None,
    ) -> LiveGazeOutput:
        """Triplanes (B or 1, 3, C, P, P) seen by cameras (B, 25) -> LiveGazeOutput of B views.

        ``source``: ``encode``'s features of the triplanes' sources (batch B or 1), required by a
        model with pixel features or source detail; the views are composited onto its plate when it
        has one. Samples along rays are jittered (with ``generator``) in training mode only.
        """
        _check_shape("cameras", cameras, (None, 25))
        rendered = self._volume(triplane, cameras, source, generator, training=self.training)
        image = self.superres(rendered.features)  # (B, 3, S_out, S_out)
        if self.detail is not None:
            if source is None or source.picture is None:
                raise ValueError("this model reads the source's detail (detail_hidden > 0): pass render(..., source=features)")
            image = self.detail(image, rendered.depth, rendered.alpha, cameras, source.picture, source.camera)
        if source is not None and source.plate is not None:
            image = composite(image, rendered.alpha, source.plate)  # the source's background behind the head
        return LiveGazeOutput(
            image=image,
            image_raw=rendered.rgb,
            depth=rendered.depth,
            alpha=rendered.alpha,
            triplane=triplane,
            source_depth=source.surface.depth if source is not None and source.surface is not None else None,
        )

    def _volume(self, triplane: torch.Tensor, cameras: torch.Tensor, source: SourceFeatures | None,
                generator: torch.Generator | None, *, training: bool, coarse: bool = False) -> RenderOutput:
        """The neural (volume) rendering G(T_g, c) of triplanes (B or 1, ...) for cameras (B, 25), before super-resolution.

        ``coarse``: half the neural side and the coarse samples only (1/8 of the samples: a silhouette, for the plate).
        """
        cfg = self.cfg.render
        if coarse:
            cfg = replace(cfg, neural_resolution=max(4, cfg.neural_resolution // 2), samples_fine=0)
        planes = triplane
        if self.mean is not None:  # the mean planes and the source's, read as one (mean_planes.py)
            planes, cfg = self.mean.around(triplane), replace(cfg, box_warp=self.mean.extent)
        terms = []  # points (B, N, 3) -> (B, N, C_plane), summed
        if self.pixels is not None:
            if source is None or source.pixels is None:
                raise ValueError("this model reads the source's pixels (pixel_channels > 0): pass render(..., source=features)")
            terms.append(functools.partial(self.pixels.read, source.pixels))
        if self.surface is not None:
            if source is None or source.surface is None:
                raise ValueError("this model reads the source's surface (surface_bands > 0): pass render(..., source=features)")
            terms.append(functools.partial(self.surface.read, source.surface))
        point_term = terms[0] if len(terms) == 1 else functools.partial(_summed, terms) if terms else None
        return render_triplane(
            planes,
            self.decoder,
            cameras,
            cfg,
            generator=generator,
            training=training,
            eg3d_compatible=self.cfg.eg3d_plane_axes,
            point_term=point_term,
        )

    def forward(
        self,
        image: torch.Tensor,
        gaze_head: torch.Tensor,
        cameras: torch.Tensor,
        source_camera: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> LiveGazeOutput:
        """Source images (B, 3, S, S) seen by ``source_camera`` (B, 25), gazes (B, 2), cameras (B, 25) -> the views (Fig. 2)."""
        features = self.encode(image, source_camera)  # E_h(I_s), E_l(I_s)
        triplane = self.redirect(features, gaze_head)  # E_tri(CrossAttention(F_h, E_g(g)), F_geo)
        return self.render(triplane, cameras, source=features, generator=generator)  # G(T_g, c) and super-resolution
