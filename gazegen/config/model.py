"""LiveGaze's network and its neural renderer."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from gazegen.config.loader import ConfigError, _build, bounded


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class RenderConfig:
    """EG3D-style volume rendering of a triplane (paper section 3.1; EG3D's FFHQ settings by default)."""

    neural_resolution: int = bounded(128, 4, 1024)  # side of the low-resolution feature image
    samples_coarse: int = bounded(48, 1, 512)  # stratified samples per ray
    samples_fine: int = bounded(48, 0, 512)  # importance samples per ray (0: coarse only)
    ray_start: float = bounded(2.25, 0.0)  # near bound along the ray, world units
    ray_end: float = bounded(3.3, 0.0)  # far bound along the ray, world units
    box_warp: float = bounded(1.0, 1e-3)  # side of the cube the triplane spans, world units
    plane_resolution: int = bounded(256, 4, 1024)  # side of each plane
    plane_channels: int = bounded(32, 1, 256)  # channels of each plane
    decoder_hidden: int = bounded(64, 1, 1024)  # width of the decoder MLP
    feature_channels: int = bounded(32, 3, 256)  # decoder output features; the first 3 are RGB
    density_bias: float = -1.0  # sigma = softplus(raw + density_bias) (EG3D: -1)
    white_background: bool = False  # composite onto white instead of black
    chunk_rays: int = bounded(1024, 1)  # rays rendered at once without autograd: bounds memory (base: 512-4096 measured alike on CPU; small presets want 8192, configs/model/demo.toml)
    empty_opacity: float = bounded(1e-3, 0.0, 1.0)  # rays of coarse opacity <= this get no fine samples (0: all refined)
    block_points: int = bounded(8192, 0)  # without autograd, points read and decoded at a time so their intermediates stay in cache (base on CPU, measured; small presets want 65536, per-op overhead; 0: all at once, e.g. on a GPU)
    source_background: bool = False  # composite every view onto the source's background, its head filled (models/background.py; needs the source camera)


RENDER_RUNTIME = ("chunk_rays", "empty_opacity", "block_points", "source_background")  # how rays are batched and skipped, what the head is composited onto: no weight depends on them


def with_runtime_render(cfg: ModelConfig, runtime: ModelConfig) -> ModelConfig:
    """``cfg``'s architecture with ``runtime``'s RENDER_RUNTIME settings (a checkpoint run under today's config)."""
    settings = {name: getattr(runtime.render, name) for name in RENDER_RUNTIME}
    return replace(cfg, render=replace(cfg.render, **settings))


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ModelConfig:
    """LiveGaze's network (paper section 3.2, Fig. 2); the defaults are the `base` preset, Live3D's sizes.

    Image side S -> E_h and E_l features at S/2 = the triplane side (`render.plane_resolution`);
    E_tri's output channels are 3 * `render.plane_channels` (read as the planes), or `lift_channels`
    lifted onto the planes through the source camera when `lift_samples` > 0. Live3D's layout (as reproduced by
    Live3DPortrait) is described in gazegen/models/*.py and mapped in gazegen/live3d.py.
    """

    image_resolution: int = bounded(512, 16, 2048)  # input side; a multiple of 16 (E_l reaches stride 16)
    output_resolution: int = bounded(512, 16, 4096)  # output side after super-resolution
    coord_channels: bool = True  # Live3D quirk: append raw (row, col) pixel indices as 2 input channels
    eg3d_plane_axes: bool = True  # EG3D quirk: read plane 2 as ZX (needed by Live3D / EG3D weights)
    # E_h: high-frequency appearance features F_h
    high_hidden: int = bounded(64, 1, 4096)  # channels of its first (7x7, stride 2) conv
    high_channels: int = bounded(96, 1, 4096)  # channels of F_h, also the width C of the gaze tokens
    high_depth: int = bounded(4, 1, 64)  # 3x3 convs after the first
    # E_l: low-frequency geometry features F_geo
    backbone_channels: tuple[int, int] = (64, 128)  # ResNet widths of layer1 and layer2 (ResNet-34)
    backbone_blocks: tuple[int, int] = (3, 4)  # basic blocks in layer1 and layer2 (ResNet-34)
    aspp_channels: int = bounded(256, 1, 4096)  # DeepLabV3 ASPP width
    aspp_rates: tuple[int, int, int] = (12, 24, 36)  # ASPP dilation rates (DeepLabV3)
    aspp_dropout: float = bounded(0.5, 0.0, 0.99)  # dropout after the ASPP projection, training only (DeepLabV3)
    geo_embed_dim: int = bounded(1024, 4, 8192)  # token width of E_l's transformer; a multiple of 4 and of geo_heads
    geo_depth: int = bounded(5, 0, 64)  # SegFormer blocks in E_l
    geo_heads: int = bounded(4, 1, 64)  # attention heads in E_l
    geo_hidden: int = bounded(128, 1, 4096)  # channels of E_l's upsampling convs
    geo_channels: int = bounded(96, 1, 4096)  # channels of F_geo
    # E_g and the gaze cross-attention
    gaze_tokens: int = bounded(8, 1, 256)  # K: gaze tokens (keys and values of the cross-attention)
    gaze_frequencies: int = bounded(6, 0, 16)  # L: Fourier frequencies pi 2^l, l < L, per angle
    gaze_hidden: int = bounded(256, 1, 8192)  # width of E_g's MLP
    fusion_heads: int = bounded(4, 1, 64)  # cross-attention heads; divides high_channels
    # E_tri: triplane decoder
    tri_channels: tuple[int, int] = (256, 128)  # widths of E_tri's conv stacks
    tri_embed_dim: int = bounded(1024, 4, 8192)  # token width of E_tri's transformer; a multiple of 4 and of tri_heads
    tri_depth: int = bounded(1, 0, 64)  # SegFormer blocks in E_tri
    tri_heads: int = bounded(2, 1, 64)  # attention heads in E_tri
    tri_sr_ratio: int = bounded(2, 1, 16)  # spatial reduction of keys/values in E_tri's attention
    mlp_ratio: float = bounded(2.0, 0.25, 16.0)  # hidden width / width of every Mix-FFN
    # plane lifting (gazegen/models/plane_lifting.py): a from-scratch option, off for Live3D's layout
    lift_samples: int = bounded(0, 0, 64)  # 0: E_tri's output is read as the 3 planes (Live3D); K: lifted through the source camera, K reads per texel
    lift_channels: int = bounded(16, 1, 1024)  # with lifting: channels of E_tri's image-aligned output
    lift_hidden: int = bounded(32, 1, 4096)  # with lifting: width of each plane's mixing convs
    # pixel-aligned source features (gazegen/models/pixel_features.py): a from-scratch option, off for Live3D's layout
    pixel_channels: int = bounded(0, 0, 256)  # 0: off; C: each sample point also reads C source features + RGB
    pixel_hidden: int = bounded(16, 1, 1024)  # width of the branch's first conv
    pixel_eye_centre: tuple[float, float, float] = (0.088, 0.0, 0.0)  # world units; its x-mirror is the other eye
    pixel_eye_radius: float = bounded(0.06, 0.0, 1.0)  # points this close to an eye centre read no source pixels
    pixel_eye_falloff: float = bounded(0.5, 0.01, 10.0)  # the read then rises linearly to full at (1 + this) x the radius
    detail_hidden: int = bounded(0, 0, 1024)  # 0: off; H: the output adds the source warped into the view by the rendered depth (models/source_detail.py), except near the eyes
    # the source's visible surface (gazegen/models/source_surface.py): a from-scratch option, off for Live3D's layout
    surface_bands: int = bounded(0, 0, 64)  # 0: off; K (>= 2): each point reads K bands of its signed depth behind the source's predicted surface
    surface_reach: float = bounded(0.2, 1e-3, 1.0)  # world units: the bands' centres span [-reach, reach]
    surface_hidden: int = bounded(32, 1, 1024)  # width of the depth head's first conv (on F_geo)
    # the mean planes (gazegen/models/mean_planes.py): a from-scratch option, off for Live3D's layout
    mean_planes: bool = False  # a learned triplane, the same for every source, read at every point beside the source's planes
    mean_planes_margin: int = bounded(0, 0, 1024)  # texels the mean planes reach beyond the source planes' cube on each side
    # super-resolution
    sr_channels: tuple[int, ...] = (256, 128)  # one x2 block per entry: output = neural render x 2^n
    style_dim: int = bounded(512, 1, 4096)  # width of the learned constant style (EG3D's w)
    sr_antialias: bool = True  # antialiased resize when the neural render is not output / 2^n (EG3D)
    render: RenderConfig = RenderConfig()  # neural rendering: planes, samples, decoder MLP

    def __post_init__(self) -> None:
        half, blocks = self.image_resolution // 2, len(self.sr_channels)
        geo, tri = self.geo_embed_dim, self.tri_embed_dim
        sizes = (*self.backbone_channels, *self.backbone_blocks, *self.aspp_rates, *self.tri_channels, *self.sr_channels)
        problems = [
            (self.image_resolution % 16 != 0, f"image_resolution {self.image_resolution} is not a multiple of 16"),
            (
                self.render.plane_resolution != half,
                f"render.plane_resolution {self.render.plane_resolution} must be image_resolution / 2 = {half}",
            ),
            (blocks == 0, "sr_channels is empty: at least one x2 block"),
            (self.output_resolution % 2**blocks != 0, f"output_resolution: not divisible by 2^{blocks} (sr_channels)"),
            (geo % 4 or geo % self.geo_heads, f"geo_embed_dim {geo} must be a multiple of 4 and of geo_heads"),
            (tri % 4 or tri % self.tri_heads, f"tri_embed_dim {tri} must be a multiple of 4 and of tri_heads"),
            (self.high_channels % self.fusion_heads != 0, "high_channels must be a multiple of fusion_heads"),
            (min(sizes) < 1, "backbone_channels, backbone_blocks, aspp_rates, tri_channels, sr_channels must be >= 1"),
            (self.surface_bands == 1, "surface_bands: 0 (off) or at least 2 bands to span [-surface_reach, surface_reach]"),
        ]
        for bad, message in problems:
            if bad:
                raise ConfigError(message)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """A ModelConfig from plain data (``to_dict``'s output, e.g. a checkpoint's config.json), validated."""
        return _build(cls, data, "")
