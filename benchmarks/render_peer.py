"""gazegen's renderer against EG3D's own, at equal settings, alternated in one run.

    git --git-dir=/work/.mirror/NVlabs+eg3d/repo show HEAD:eg3d/training/volumetric_rendering/renderer.py ...
    python benchmarks/render_peer.py --eg3d /tmp/eg3d                 # tiny and base, both scenes
    python benchmarks/render_peer.py --eg3d /tmp/eg3d --settings tiny --repeats 5

``--eg3d`` is a checkout of NVlabs/eg3d (the repository root, or its ``eg3d/`` folder): only
``training/volumetric_rendering/`` is imported from it (ImportanceRenderer, RaySampler, its ray
marcher and math utils; nothing of EG3D lives in this repository). Both renderers get the same
random planes (1, 3, 32, P, P), the same decoder (gazegen's ``TriplaneDecoder``, 32 -> 64 -> 33:
EG3D's ``OSGDecoder`` computation, called through EG3D's decoder interface), EG3D's FFHQ camera
(radius 2.7, normalised focal 4.2647), ray bounds [2.25, 3.3], box 1, and the same numbers of
coarse and importance samples; EG3D's plane axes (``eg3d_compatible``) and gazegen's default
chunking. Settings (from issue 19):

    tiny: 64^2 planes, 32^2 rays, 12 + 12 samples
    base: 256^2 planes, 128^2 rays, 48 + 48 samples

Scenes: ``random`` reads random planes everywhere (every ray meets density: no empty space to
skip); ``head`` also makes plane channel 0 drive the density (decoder row 0) so that density is
high inside a ball of radius 0.25 at the origin and about 0 outside it (sigma ~ 2e-5), leaving
a share of background rays as in a face crop (printed). EG3D's work does not depend on the scene.

Per setting and scene it prints seconds per image (median of ``--repeats``, the two renderers
alternated), the ratio EG3D / gazegen, on CPU also the medians of the process's CPU time per call
and their ratio (with one torch thread, the work done, less sensitive than the wall clock to
other processes on a shared machine), and the peak memory of one render of each: on CPU the
process's peak resident set during the call (VmHWM, reset through /proc/self/clear_refs) and its
rise over the resident set before the call; on CUDA ``max_memory_allocated``. Run with one
torch thread (``--threads``) under ``nice`` on a shared machine; the load average is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from gazegen.config import NormalisationConfig, RenderConfig
from gazegen.geometry import head_pose_to_camera, split_camera
from gazegen.rendering.decoder import FieldOutput, TriplaneDecoder
from gazegen.rendering.renderer import render_triplane

EG3D_FFHQ_FOCAL = 4.2647  # EG3D's FFHQ intrinsics, normalised by the image size
SETTINGS = {
    "tiny": {"plane_resolution": 64, "neural_resolution": 32, "samples_coarse": 12, "samples_fine": 12},
    "base": {"plane_resolution": 256, "neural_resolution": 128, "samples_coarse": 48, "samples_fine": 48},
}
BALL_RADIUS = 0.25  # world units: the "head" scene's solid ball


@dataclass(frozen=True)
class Peak:
    peak_mb: float  # peak during the call (CPU: whole-process resident set)
    rise_mb: float  # peak minus what was held before the call


def load_eg3d(checkout: Path):
    """EG3D's ImportanceRenderer and RaySampler classes from a checkout."""
    root = checkout / "eg3d" if (checkout / "eg3d" / "training").is_dir() else checkout
    if not (root / "training" / "volumetric_rendering" / "renderer.py").is_file():
        raise SystemExit(f"{checkout}: no training/volumetric_rendering/renderer.py under it or under its eg3d/ folder")
    sys.path.insert(0, str(root))
    from training.volumetric_rendering.ray_sampler import RaySampler
    from training.volumetric_rendering.renderer import ImportanceRenderer

    return ImportanceRenderer, RaySampler


class EG3DDecoder(torch.nn.Module):
    """gazegen's TriplaneDecoder behind EG3D's decoder interface: (features (N, 3, M, C), directions) -> dict."""

    def __init__(self, decoder: TriplaneDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, sampled_features: torch.Tensor, ray_directions: torch.Tensor) -> dict[str, torch.Tensor]:
        out: FieldOutput = self.decoder(sampled_features)  # mean over planes, MLP, widened sigmoid
        return {"rgb": out.features, "sigma": out.density_raw}


def scene(setting: str, kind: str, seed: int = 0) -> tuple[torch.Tensor, TriplaneDecoder, RenderConfig]:
    """Planes (1, 3, 32, P, P), a decoder and the RenderConfig of a setting and scene."""
    cfg = RenderConfig(**SETTINGS[setting])
    torch.manual_seed(seed)
    p = cfg.plane_resolution
    planes = torch.randn(1, 3, cfg.plane_channels, p, p)
    decoder = TriplaneDecoder.from_config(cfg)
    if kind == "head":
        coords = (torch.arange(p) + 0.5) / p * 2 - 1  # texel centres in grid units; box_warp 1: world = grid / 2
        v, u = torch.meshgrid(coords, coords, indexing="ij")
        inside = ((u**2 + v**2) < (2 * BALL_RADIUS) ** 2).float()  # (P, P) the ball's disc on every plane
        planes[:, :, 0] = 8 * inside - 4  # mean over planes: +4 where all three discs overlap, <= -4/3 elsewhere
        with torch.no_grad():  # raw density = softplus(5 * mean feature 0) - 10
            decoder.net[0].weight[0] = 0
            decoder.net[0].weight[0, 0] = 5.0
            decoder.net[0].bias[0] = 0
            decoder.net[2].weight[0] = 0
            decoder.net[2].weight[0, 0] = 1.0
            decoder.net[2].bias[0] = -10.0
    return planes, decoder, cfg


def ffhq_camera() -> torch.Tensor:
    """(1, 25) a frontal camera at radius 2.7 with EG3D's FFHQ focal length."""
    norm = NormalisationConfig(focal=EG3D_FFHQ_FOCAL * 512, resolution=512, radius=2.7)
    return head_pose_to_camera(torch.zeros(1, 2, dtype=torch.float64), norm).float()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status: peak memory is measured on Linux only")


def peak_of(fn: Callable[[], object], device: torch.device) -> Peak:
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device)
        return Peak(peak / 2**20, (peak - before) / 2**20)
    before = rss_mb("VmRSS")
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    fn()
    peak = rss_mb("VmHWM")
    return Peak(peak, peak - before)


def seconds(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call (CPU seconds: what the call itself used, whatever else runs)."""
    sync(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def compare(setting: str, kind: str, eg3d_classes, device: torch.device, repeats: int) -> None:
    importance_renderer, ray_sampler = eg3d_classes
    planes, decoder, cfg = scene(setting, kind)
    planes, decoder, camera = planes.to(device), decoder.to(device).eval(), ffhq_camera().to(device)
    res = cfg.neural_resolution
    options = {
        "ray_start": cfg.ray_start, "ray_end": cfg.ray_end, "box_warp": cfg.box_warp,
        "depth_resolution": cfg.samples_coarse, "depth_resolution_importance": cfg.samples_fine,
        "clamp_mode": "softplus", "disparity_space_sampling": False, "white_back": False,
    }
    eg3d_renderer, eg3d_rays, eg3d_decoder = importance_renderer().to(device), ray_sampler().to(device), EG3DDecoder(decoder)

    def run_eg3d() -> torch.Tensor:
        c2w, k = split_camera(camera)
        origins, directions = eg3d_rays(c2w, k, res)
        features, _, weights = eg3d_renderer(planes, eg3d_decoder, origins, directions, options)
        return weights.reshape(1, res, res)  # (1, R, R) opacity

    def run_ours() -> torch.Tensor:
        return render_triplane(planes, decoder, camera, cfg, eg3d_compatible=True).alpha[:, 0]  # (1, R, R)

    with torch.no_grad():
        alpha_eg3d, alpha_ours = run_eg3d(), run_ours()  # warm-up, and a check that both see the same scene
        background = (alpha_ours <= cfg.empty_opacity).float().mean().item()
        times_eg3d, times_ours = [], []
        for _ in range(repeats):
            times_eg3d.append(seconds(run_eg3d, device))
            times_ours.append(seconds(run_ours, device))
        peak_eg3d, peak_ours = peak_of(run_eg3d, device), peak_of(run_ours, device)
    t_eg3d, t_ours = (statistics.median(t[0] for t in times) for times in (times_eg3d, times_ours))
    cpu_eg3d, cpu_ours = (statistics.median(t[1] for t in times) for times in (times_eg3d, times_ours))
    cpu = f" (CPU time {cpu_eg3d * 1e3:.0f} / {cpu_ours * 1e3:.0f} ms: {cpu_eg3d / cpu_ours:.2f}x)" if device.type == "cpu" else ""
    print(f"{setting:4s} {kind:6s} | EG3D {t_eg3d * 1e3:9.1f} ms | gazegen {t_ours * 1e3:9.1f} ms | "
          f"ratio {t_eg3d / t_ours:5.2f}x{cpu} | peak MB EG3D {peak_eg3d.peak_mb:7.0f} (+{peak_eg3d.rise_mb:.0f}) "
          f"gazegen {peak_ours.peak_mb:7.0f} (+{peak_ours.rise_mb:.0f}) | mean alpha EG3D {alpha_eg3d.mean():.3f} "
          f"gazegen {alpha_ours.mean():.3f} | background rays {background:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eg3d", type=Path, required=True, help="a checkout of NVlabs/eg3d")
    parser.add_argument("--settings", nargs="+", default=["tiny", "base"], choices=sorted(SETTINGS))
    parser.add_argument("--scenes", nargs="+", default=["random", "head"], choices=["random", "head"])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each renderer, alternated (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    eg3d_classes = load_eg3d(args.eg3d)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {device}, "
          f"load average {os.getloadavg()[0]:.1f}; times are medians of {args.repeats} alternated runs", flush=True)
    for setting in args.settings:
        for kind in args.scenes:
            compare(setting, kind, eg3d_classes, device, args.repeats)


if __name__ == "__main__":
    main()
