"""The importer of Live3D weights into LiveGaze (foreign checkpoints; gazegen's own format is
gazegen/checkpoint.py).

Live3D (Trevithick et al. 2023) has no official code or weights. ``load_live3d`` reads the
checkpoints of Live3DPortrait (github.com/Dong142857/Live3DPortrait, the public reproduction),
``torch.save`` of ``{"encoder_state_dict": EG3DInvEncoder.state_dict(), "renderer_state_dict":
TriplaneRenderer.state_dict(), ...}`` (training/coach.py ``__get_save_dict``; inference.py reads
those two keys). ``LIVE3D_KEY_RULES`` is the whole correspondence, in one place.

What that layout rests on: the key names come from the reproduction's code (models/model.py,
its copy of EG3D's superresolution.py / networks_stylegan2.py / triplane.py) and from
segmentation_models_pytorch 0.3.x (unpinned there; the checkpoints date from Dec 2023 - Jan 2024,
before smp 0.5 renamed ``DeepLabV3Decoder``'s children to ``aspp`` / ``conv``). The published
weight files themselves (Google Drive) could not be opened here, and only the "Normal" model is
mapped (its "LT" variant has other shapes). The blocks were checked numerically against the
reproduction's EG3D ``SynthesisBlock`` and smp 0.3.3's ``Block``, ``OverlapPatchEmbed`` and
``DeepLabV3Decoder`` (BatchNorm removed) to about 1e-6; the ResNet blocks against torchvision's
layout by reading only.
The importer reports problems as ``CheckpointError`` naming the file, like gazegen's own checkpoints.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from gazegen.checkpoint import CheckpointError, describe_keys
from gazegen.models.livegaze import LiveGaze

def _equalized_lr(t: torch.Tensor) -> torch.Tensor:
    """Fold EG3D's run-time weight gain 1/sqrt(fan_in) (lr_multiplier 1) into a stored weight."""
    return t / math.sqrt(t[0].numel())


def _copy(t: torch.Tensor) -> torch.Tensor:
    return t


def _flatten(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1)  # Live3D's const (1, 1, D) -> our style (D,)


Transform = Callable[[torch.Tensor], torch.Tensor]

# (pattern over "<section>:<Live3DPortrait key>", LiveGaze key as a re.sub template, transform).
# First full match wins. Sections: "encoder" = EG3DInvEncoder (smp 0.3 DeepLabV3 resnet34 depth 3
# with BatchNorm removed + EncoderF + EncoderEhigh + EncoderFinal), "renderer" = TriplaneRenderer
# (EG3D's OSGDecoder and SuperresolutionHybrid8XDC, and the constant w `const`).
LIVE3D_KEY_RULES: tuple[tuple[str, str, Transform], ...] = (
    (r"encoder:EHigh_encoder\.net\.(\d+)\.(weight|bias)", r"high_encoder.net.\1.\2", _copy),
    (r"encoder:encoder\.(conv1|layer[12]\.\d+\.conv[12])\.(weight|bias)", r"low_encoder.backbone.\1.\2", _copy),
    (
        r"encoder:encoder\.(layer[12]\.\d+)\.downsample\.0\.(weight|bias)",
        r"low_encoder.backbone.\1.downsample.\2",
        _copy,
    ),
    (r"encoder:decoder\.0\.convs\.([0-3])\.0\.(weight|bias)", r"low_encoder.aspp.convs.\1.\2", _copy),
    (r"encoder:decoder\.0\.convs\.4\.1\.(weight|bias)", r"low_encoder.aspp.pool_conv.\1", _copy),
    (r"encoder:decoder\.0\.project\.0\.(weight|bias)", r"low_encoder.aspp.project.\1", _copy),
    (r"encoder:decoder\.1\.(weight|bias)", r"low_encoder.aspp.fuse.\1", _copy),
    (r"encoder:F_encoder\.patchembed\.(.+)", r"low_encoder.transformer.patch_embed.\1", _copy),
    (
        r"encoder:F_encoder\.blocks\.(\d+)\.mlp\.dwconv\.dwconv\.(.+)",
        r"low_encoder.transformer.blocks.\1.mlp.dwconv.\2",
        _copy,
    ),
    (r"encoder:F_encoder\.blocks\.(.+)", r"low_encoder.transformer.blocks.\1", _copy),
    (r"encoder:F_encoder\.net\.(\d+)\.(weight|bias)", r"low_encoder.head.\1.\2", _copy),
    (r"encoder:Final_encoder\.net\.(\d+)\.(weight|bias)", r"triplane_head.net.\1.\2", _copy),
    (r"encoder:Final_encoder\.pathembed\.(.+)", r"triplane_head.transformer.patch_embed.\1", _copy),
    (
        r"encoder:Final_encoder\.block\.mlp\.dwconv\.dwconv\.(.+)",
        r"triplane_head.transformer.blocks.0.mlp.dwconv.\1",
        _copy,
    ),
    (r"encoder:Final_encoder\.block\.(.+)", r"triplane_head.transformer.blocks.0.\1", _copy),
    (r"encoder:Final_encoder\.output_net\.(\d+)\.(weight|bias)", r"triplane_head.output_net.\1.\2", _copy),
    (r"renderer:const", r"superres.style", _flatten),
    (r"renderer:decoder\.net\.([02])\.weight", r"decoder.net.\1.weight", _equalized_lr),
    (r"renderer:decoder\.net\.([02])\.bias", r"decoder.net.\1.bias", _copy),
    (
        r"renderer:superresolution\.block(\d+)\.(conv0|conv1|torgb)\.affine\.weight",
        r"superres.blocks.\1.\2.affine.weight",
        _equalized_lr,
    ),
    (r"renderer:superresolution\.block(\d+)\.torgb\.weight", r"superres.blocks.\1.torgb.weight", _equalized_lr),
    (
        r"renderer:superresolution\.block(\d+)\.(conv0|conv1|torgb)\.(weight|bias|affine\.bias)",
        r"superres.blocks.\1.\2.\3",
        _copy,
    ),
)

# Keys of Live3DPortrait checkpoints that its forward pass never uses, dropped knowingly.
LIVE3D_IGNORED: tuple[str, ...] = (
    r"encoder:encoder\.layer[34]\..+",  # ResNet stages past encoder_depth=3: built by smp 0.3, never run
    r"renderer:.*\.(noise_const|noise_strength)",  # StyleGAN2 noise: Live3D renders with noise_mode='none'
    r"renderer:.*resample_filter",  # the fixed [1, 3, 3, 1] FIR filter, rebuilt in superres.py
)

LIVE3D_SECTIONS = {"encoder": "encoder_state_dict", "renderer": "renderer_state_dict"}
GAZE_PREFIXES = ("gaze_encoder.", "gaze_fusion.")  # LiveGaze's own modules: absent from Live3D by design


@dataclass(frozen=True)
class Live3DImport:
    """What ``load_live3d`` did, by key."""

    loaded: tuple[str, ...]  # LiveGaze keys filled from the checkpoint
    missing: tuple[str, ...]  # LiveGaze keys the checkpoint does not have (the gaze modules only)
    unexpected: tuple[str, ...]  # "section:key" of the checkpoint with no place in LiveGaze (strict=False only)
    ignored: tuple[str, ...]  # "section:key" known to be unused by Live3D (LIVE3D_IGNORED)


@dataclass(frozen=True)
class Live3DTranslation:
    """A Live3DPortrait checkpoint in LiveGaze's names, before any model is involved."""

    state: dict[str, torch.Tensor]  # LiveGaze key -> tensor, transformed to LiveGaze's parametrisation
    sources: dict[str, str]  # LiveGaze key -> "section:key" it came from
    unexpected: list[str]  # "section:key" matched by no rule
    ignored: list[str]  # "section:key" matched by LIVE3D_IGNORED


def translate_live3d(checkpoint: dict[str, Any]) -> Live3DTranslation:
    """Live3DPortrait's two state dicts -> LiveGaze names and parametrisation (no model needed)."""
    out = Live3DTranslation(state={}, sources={}, unexpected=[], ignored=[])
    for section, entry in LIVE3D_SECTIONS.items():
        for key, tensor in checkpoint[entry].items():
            name = f"{section}:{key}"
            if any(re.fullmatch(p, name) for p in LIVE3D_IGNORED):
                out.ignored.append(name)
                continue
            rule = next(((p, t, f) for p, t, f in LIVE3D_KEY_RULES if re.fullmatch(p, name)), None)
            if rule is None:
                out.unexpected.append(name)
                continue
            pattern, template, transform = rule
            target = re.sub(pattern, template, name)
            out.state[target] = transform(tensor)
            out.sources[target] = name
    return out


def load_live3d(path: str | Path, model: LiveGaze, *, strict: bool = True) -> Live3DImport:
    """Initialise ``model`` from a Live3DPortrait checkpoint; only the gaze modules may stay unfilled.

    ``strict``: checkpoint keys with no place in LiveGaze (and not in LIVE3D_IGNORED) are an error;
    otherwise they are reported in ``unexpected``. The model should use ``eg3d_plane_axes`` and
    ``coord_channels`` (the base preset does) to behave as Live3D did.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: Live3D checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and weights_only errors share no base class
        message = f"not readable with torch.load(weights_only=True) ({type(e).__name__}: {e})"
        raise CheckpointError(f"{path}: {message}") from None
    entries = checkpoint if isinstance(checkpoint, dict) else {}
    absent = [k for k in LIVE3D_SECTIONS.values() if not isinstance(entries.get(k), dict)]
    if absent:
        raise CheckpointError(f"{path}: not a Live3DPortrait checkpoint: no {', '.join(absent)} (expected both)")
    found = translate_live3d(checkpoint)
    if found.unexpected and strict:
        raise CheckpointError(f"{path}: keys with no place in LiveGaze: {describe_keys(found.unexpected)}")
    own = model.state_dict()
    for key, tensor in found.state.items():
        if key not in own:
            raise CheckpointError(f"{path}: {found.sources[key]} maps to {key}, which this LiveGaze does not have")
        if tensor.shape != own[key].shape:
            raise CheckpointError(
                f"{path}: {found.sources[key]} has shape {tuple(tensor.shape)} (as {key}); "
                f"this LiveGaze config expects {tuple(own[key].shape)}"
            )
    missing = sorted(set(own) - set(found.state))
    not_gaze = [k for k in missing if not k.startswith(GAZE_PREFIXES)]
    if not_gaze:
        gaze_only = "only the gaze modules may be missing"
        raise CheckpointError(f"{path}: lacks weights for {describe_keys(not_gaze)} ({gaze_only})")
    model.load_state_dict(found.state, strict=False)
    return Live3DImport(
        loaded=tuple(sorted(found.state)),
        missing=tuple(missing),
        unexpected=tuple(found.unexpected),
        ignored=tuple(found.ignored),
    )
