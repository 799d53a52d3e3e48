"""Speed of LiveGaze: time, memory, parameters and MACs per stage, and the gain of the staged API.

``bench_model`` builds a randomly initialised network from a preset and measures, on one device:

* ms per image of ``encode``, ``redirect``, ``render`` and the whole ``forward`` at ``batch``
  (median of ``repeats`` timed runs after ``warmup`` runs; CUDA synchronised around each);
* batch-1 latency of ``forward`` and the throughput (images/s) at ``batch``;
* peak memory of a forward at ``batch``: ``torch.cuda.max_memory_allocated`` on CUDA, the
  process's peak resident set (VmHWM, reset through /proc/self/clear_refs) on CPU;
* parameters and MACs per image of each stage (``FlopCounterMode`` flops / 2 at batch 1:
  convolutions, matmuls and attention; grid sampling and elementwise work are not counted);
* the grid ratio: one source x G gazes x V views through encode once / redirect per gaze /
  render per row (gazegen/models/staged_grid.py, synthesis's own calls), against G*V full
  forwards, both ``batch`` images per call (wall clock), and the staged grid's images per second;
  beside it the ratio the measured stage times allow against the forward as measured (``bound``,
  ``staged_grid.grid_bound``: ``ms_per_image.total`` over a grid row's encode / (G V) + redirect / V +
  render) and what they would allow were the volume render free (``bound_free_volume``: the render's
  super-resolution alone, ``ms_per_image.superres``, timed on a random feature image).

The issue-19 figures for a GPU are four runs of ``gazegen bench --preset configs/model/base.toml
--device cuda``: plain, ``--dtype bf16``, ``--compile`` and both (``ms_per_image.render`` at
batch 1, ``grid.images_per_s``, ``peak_memory_mb``).

The process keeps the memory it frees (``keep_freed_memory``, as synthesis's actors and the
trainer do). ``dtype="bf16"`` (or ``"fp16"`` on CUDA) runs under ``torch.autocast``;
``compile=True`` wraps each stage in ``torch.compile`` (give it ``warmup`` >= 3: Inductor keeps
compiling kernels and new shapes during the first calls). Everything runs under ``torch.inference_mode`` with a
randomly initialised network: speed does not depend on the weights.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from gazegen.allocator import keep_freed_memory
from gazegen.config import ConfigError, ModelConfig, NormalisationConfig, load_config
from gazegen.device import torch_device
from gazegen.geometry import head_pose_to_camera
from gazegen.models.livegaze import LiveGaze
from gazegen.models.staged_grid import grid_bound, staged_grid

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
STAGE_MODULES = {
    "encode": ("high_encoder", "low_encoder"),
    "redirect": ("gaze_encoder", "gaze_fusion", "triplane_head", "lifting"),
    "render": ("decoder", "superres"),
}


def _inputs(cfg: ModelConfig, n: int, device: torch.device, seed: int) -> tuple[torch.Tensor, ...]:
    """Images (n, 3, S, S), gazes (n, 2) and cameras (n, 25) of heads turned up to +-0.3 rad."""
    g = torch.Generator().manual_seed(seed)
    s = cfg.image_resolution
    image = torch.rand(n, 3, s, s, generator=g) * 2 - 1
    gaze = (torch.rand(n, 2, generator=g) - 0.5) * 1.2
    cameras = head_pose_to_camera((torch.rand(n, 2, generator=g) - 0.5) * 0.6, NormalisationConfig()).float()
    return image.to(device), gaze.to(device), cameras.to(device)


def _feature_image(cfg: ModelConfig, n: int, device: torch.device, seed: int) -> torch.Tensor:
    """A random neural rendering (n, F, R, R) in [-1, 1], channels-last as the renderer hands it to the super-resolution."""
    r = cfg.render.neural_resolution
    image = torch.rand(n, cfg.render.feature_channels, r, r, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return image.to(device).contiguous(memory_format=torch.channels_last)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_memory_allocated"
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024, "cpu_peak_rss"
    raise RuntimeError("no VmHWM in /proc/self/status: peak RSS is measured on Linux only")


def _macs(fn: Callable[[], Any]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2


def _count_params(model: LiveGaze) -> dict[str, int]:
    counts = {
        stage: sum(p.numel() for name in names if getattr(model, name) is not None for p in getattr(model, name).parameters())
        for stage, names in STAGE_MODULES.items()
    }
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _grid_ratio(
    stages: dict[str, Callable],
    cfg: ModelConfig,
    device: torch.device,
    batch: int,
    grid: tuple[int, int],
    repeats: int,
    warmup: int,
    seed: int,
) -> dict[str, float]:
    """Seconds for one source x G gazes x V views, staged (``staged_grid``, as synthesis runs it) vs G*V full
    forwards, both ``batch`` images per call, and their ratio."""
    gazes, views = grid
    image, _, _ = _inputs(cfg, 1, device, seed)
    _, gaze, _ = _inputs(cfg, gazes, device, seed + 1)
    _, _, cameras = _inputs(cfg, views, device, seed + 2)
    gaze_of, view_of = np.repeat(np.arange(gazes), views), np.tile(np.arange(views), gazes)  # (G*V,) row -> gaze, view

    def staged() -> None:
        features = stages["encode"](image)
        for _ in staged_grid(stages["redirect"], stages["render"], features, gaze, cameras, gaze_of, view_of, batch):
            pass

    pairs_gaze = gaze.repeat_interleave(views, 0)  # (G*V, 2): gaze g for views 0 .. V-1
    pairs_cameras = cameras.repeat(gazes, 1)  # (G*V, 25)

    def full() -> None:
        for part in _chunks(gazes * views, batch):
            n = part.stop - part.start
            stages["forward"](image.expand(n, -1, -1, -1), pairs_gaze[part], pairs_cameras[part])

    for _ in range(warmup):
        staged(), full()
    runs = [(_median_seconds(staged, device, 1, 0), _median_seconds(full, device, 1, 0)) for _ in range(repeats)]
    staged_s, full_s = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)  # interleaved runs
    return {"gazes": gazes, "views": views, "staged_s": staged_s, "full_s": full_s, "ratio": full_s / staged_s,
            "images_per_s": gazes * views / staged_s}


def _stage_seconds(
    stages: dict[str, Callable], inputs: tuple[torch.Tensor, ...], device: torch.device, repeats: int, warmup: int
) -> dict[str, float]:
    """Median seconds of each stage and of the whole forward on one batch."""
    image, gaze, cameras = inputs
    features = stages["encode"](image)
    triplane = stages["redirect"](features, gaze)
    return {
        "encode": _median_seconds(lambda: stages["encode"](image), device, repeats, warmup),
        "redirect": _median_seconds(lambda: stages["redirect"](features, gaze), device, repeats, warmup),
        "render": _median_seconds(lambda: stages["render"](triplane, cameras, source=features), device, repeats, warmup),
        "superres": _median_seconds(stages["superres"], device, repeats, warmup),  # part of render
        "total": _median_seconds(lambda: stages["forward"](image, gaze, cameras), device, repeats, warmup),
    }


def _stage_macs(model: LiveGaze, image: torch.Tensor, gaze: torch.Tensor, cameras: torch.Tensor) -> dict[str, float]:
    """MACs of each stage for the given (batch-1) inputs, and their total."""
    source = head_pose_to_camera(torch.zeros(len(image), 2), NormalisationConfig()).float().to(image.device)
    features = model.encode(image, source)
    triplane = model.redirect(features, gaze)
    macs = {
        "encode": _macs(lambda: model.encode(image, source)),
        "redirect": _macs(lambda: model.redirect(features, gaze)),
        "render": _macs(lambda: model.render(triplane, cameras, source=features)),
    }
    return {**macs, "total": sum(macs.values())}


def _peak_memory_of(fn: Callable[[], Any], device: torch.device) -> tuple[float, str]:
    _reset_peak_memory(device)
    fn()
    _sync(device)
    return _peak_memory_mb(device)


def bench_model(
    preset_path: str | Path,
    device: str = "cpu",
    batch: int = 1,
    compile: bool = False,
    dtype: str = "fp32",
    *,
    repeats: int = 5,
    warmup: int = 1,
    grid: tuple[int, int] = (4, 4),
    grid_repeats: int = 3,
    seed: int = 0,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Measure a preset's network on ``device``; returns plain data (JSON-able), see the module docstring.

    ``overrides``: ``key.sub=value`` changes to the preset (e.g. ``render.chunk_rays=1024``)."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    dev = torch_device(device)
    cfg = load_config(ModelConfig, preset_path, overrides)
    keep_freed_memory()  # as synthesis's actors and the trainer run (gazegen/allocator.py): tiny forward 1.9 -> 1.4 ms/image
    torch.manual_seed(seed)
    model = LiveGaze(cfg).eval().requires_grad_(False).to(dev)  # inference only (and FlopCounterMode needs it)
    wrap = torch.compile if compile else (lambda fn: fn)
    frontal = head_pose_to_camera(torch.zeros(1, 2), NormalisationConfig()).float().to(dev)  # every source's camera
    encode, forward = wrap(model.encode), wrap(model)
    stages = {name: wrap(getattr(model, name)) for name in ("redirect", "render")}
    superres, low = wrap(model.superres), _feature_image(cfg, batch, dev, seed)
    stages["superres"] = lambda: superres(low)  # the render's last step alone
    stages["encode"] = lambda image: encode(image, frontal.expand(len(image), -1))
    stages["forward"] = lambda image, gaze, cameras: forward(image, gaze, cameras, frontal.expand(len(image), -1))
    autocast = torch.autocast(dev.type, dtype=DTYPES[dtype]) if DTYPES[dtype] else contextlib.nullcontext()
    image, gaze, cameras = _inputs(cfg, batch, dev, seed)
    with torch.inference_mode(), autocast:
        seconds = _stage_seconds(stages, (image, gaze, cameras), dev, repeats, warmup)
        if batch == 1:
            latency = seconds["total"]
        else:
            latency = _median_seconds(lambda: stages["forward"](image[:1], gaze[:1], cameras[:1]), dev, repeats, warmup)
        peak_mb, peak_kind = _peak_memory_of(lambda: stages["forward"](image, gaze, cameras), dev)
        macs = _stage_macs(model, image[:1], gaze[:1], cameras[:1])
        grid_result = _grid_ratio(stages, cfg, dev, batch, grid, grid_repeats, warmup, seed=seed + 10)
    encode_s, redirect_s, forward_s = seconds["encode"], seconds["redirect"], seconds["total"]
    # what the stage times allow against the forward as measured (the ratio's own numerator), and were the volume free
    grid_result["bound"] = grid_bound(encode_s, redirect_s, seconds["render"], *grid, forward=forward_s)
    free = forward_s - seconds["render"] + seconds["superres"]  # the forward, were its volume render free too
    grid_result["bound_free_volume"] = grid_bound(encode_s, redirect_s, seconds["superres"], *grid, forward=free)
    return {
        "preset": str(preset_path),
        "overrides": list(overrides),
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "dtype": dtype,
        "compile": compile,
        "batch": batch,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "params": _count_params(model),
        "gmacs_per_image": {k: v / 1e9 for k, v in macs.items()},
        "ms_per_image": {k: 1e3 * v / batch for k, v in seconds.items()},
        "latency_ms_batch1": 1e3 * latency,
        "throughput_images_per_s": batch / seconds["total"],
        "peak_memory_mb": peak_mb,
        "peak_memory_kind": peak_kind,
        "grid": grid_result,
    }
