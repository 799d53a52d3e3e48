"""Proof that training learns: LiveGaze on procedural heads, scored on held-out subjects as it trains.

    python benchmarks/learning.py                              # demo store and config, 600 steps
    python benchmarks/learning.py --steps 600 --eval-every 150 --work /tmp/learning

1. A store of procedural heads (128 px; 10 subjects: 7 train, 1 validation, 2 held out for this
   benchmark; 12 gazes x 9 cameras), made unless ``--work``/store exists.
2. Training with configs/train/demo.toml (``--set`` overrides it) in chunks of ``--eval-every``
   steps; a chunk resumes the previous one, which is exact (tests/test_trainer.py), so this is
   one run interrupted for scoring.
3. After each chunk (and at step 0), on the held-out subjects, fixed pairs, source -> target:
   (a) new gaze, same camera: eye-region PSNR of the prediction against the ground truth, beside
       the copy-the-source baseline (the source image unchanged), which the model must beat;
   (b) new gaze and new camera: PSNR and SSIM of the face and the eye regions, depth L1 (mm)
       against the store's exact depth;
   (c) autoencoding: the source itself, same image and camera: face PSNR (the prior's first bar);
   (d) novel view: the same frame (gaze) from another camera: face PSNR beside copy's, depth L1 beside the
       mean head's (``--checkpoint``: the per-camera median depth of the store's training subjects, no image;
       evaluation/depth_baseline.py) on the same pixels: all with a true depth, those inside the triplane's cube,
       and those where the render keeps a depth (alpha >= 0.5, as ``gazegen synthesize`` writes depth: a render
       that misses a silhouette-edge pixel writes no depth there, but its opacity-normalised depth, scored on all
       pixels, is that of the faint density the ray met, often far behind the head).
   ``--checkpoint CKPT --store STORE`` scores one checkpoint (e.g. the shipped prior) without training.
   Regions: PSNR over the target's mask; face SSIM on both images with everything outside the
   target's face mask black; eye SSIM on the bounding box of the target's eye mask (padded to at
   least 16 px). Two references: copy (the source unchanged) and flat (the source with its eye
   region filled by that region's mean colour): an eye rendered as a smooth blur beats copy
   wherever the iris moved, so beating copy alone is weak evidence; beating flat is not. Procedural heads are lit differently in every frame (like ETH-XGaze), which the
   model cannot know from the source: no method reaches the target's lighting, copy included.
Prints a table with the training time, and writes ``WORK/learning.json``. The machine may be
shared: the load average is printed beside the times.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gazegen.metrics import scores as metrics
from gazegen.checkpoint import load_checkpoint
from gazegen.config import CONFIG_DIR, RigConfig, SynthConfig, SynthHeadsConfig, TrainConfig, load_config
from gazegen.data.heads import synthesize_store
from gazegen.models.livegaze import LiveGaze
from gazegen.rendering.rays import camera_rays
from gazegen.data.xgaze import open_subject
from gazegen.data.images import image_tensor, mask_tensor
from gazegen.imaging import resize_tensor
from gazegen.data.splits import store_splits
from gazegen.evaluation.depth_baseline import mean_head_depth
from gazegen.train.data import TripletDataset, Triplets, TripletSizes
from gazegen.train.depth_prior import DatasetDepth
from gazegen.train.subjects import read_subject
from gazegen.train.trainer import run_training
from gazegen.train.validate import depth_l1_mm

STORE = SynthHeadsConfig(subjects=10, resolution=128, gazes=12, test_subjects=2, rig=RigConfig(views=9))


def pairs(dataset: TripletDataset, per_subject: int, same_camera: bool, seed: int,
          same_frame: bool = False) -> list[tuple[int, int, int]]:
    """(subject, source row, target row): another frame (or, ``same_frame``, the same), and the same or another camera."""
    rng = np.random.default_rng([seed, int(same_camera), int(same_frame)])
    out = []
    for k, s in enumerate(dataset.subjects):
        frame, cam = s.labels.frame_index, s.labels.cam_index
        while sum(1 for p in out if p[0] == k) < per_subject:
            source = int(rng.integers(len(frame)))
            ok = (frame == frame[source]) if same_frame else (frame != frame[source])
            ok &= (cam == cam[source]) if same_camera else (cam != cam[source])
            out.append((k, source, int(rng.choice(np.flatnonzero(ok)))))
    return out


def eye_crop_ssim(pred: torch.Tensor, target: torch.Tensor, eyes: torch.Tensor, pad: int = 4, least: int = 16) -> float:
    """SSIM on the bounding box of the eye mask (one image), padded and grown to ``least`` px."""
    ys, xs = torch.nonzero(eyes[0], as_tuple=True)
    if ys.numel() == 0:
        return float("nan")
    size = eyes.shape[-1]
    box = []
    for lo, hi in ((int(ys.min()), int(ys.max()) + 1), (int(xs.min()), int(xs.max()) + 1)):
        lo, hi = lo - pad, hi + pad
        grow = max(0, least - (hi - lo))
        lo, hi = max(0, lo - grow // 2), min(size, hi + grow - grow // 2)
        box.append((lo, hi))
    (y0, y1), (x0, x1) = box
    return float(metrics.ssim(pred[None, :, y0:y1, x0:x1], target[None, :, y0:y1, x0:x1])[0])


def flat_eyes(dataset: TripletDataset, pairs_: list[tuple[int, int, int]], size: int) -> torch.Tensor:
    """The sources with their own eye region filled by its mean colour: (N, 3, size, size), a blurred-eyes reference."""
    out = []
    for k, source, _ in pairs_:
        with open_subject(dataset.subjects[k].path) as reader:
            sample = reader[source]
        image, eyes = image_tensor(sample.image, size), mask_tensor(sample.eye_mask, size) > 0.5
        mean = image[:, eyes[0]].mean(1) if eyes.any() else image.new_zeros(3)
        out.append(torch.where(eyes, mean[:, None, None], image))
    return torch.stack(out)


def in_volume(depth: torch.Tensor, cameras: torch.Tensor, box_warp: float) -> torch.Tensor:
    """Where the surface of a z-depth map (B, 1, R, R) seen by cameras (B, 25) lies inside the triplane's cube
    (|x|, |y|, |z| <= box_warp / 2, the only space the model can shape): (B, 1, R, R) bool."""
    b, side = depth.shape[0], depth.shape[-1]
    rays = camera_rays(cameras.to(depth.dtype), side)  # (B, R*R, 3) origins and directions, (B, R*R, 1)
    points = rays.origins + (depth.reshape(b, -1, 1) / rays.z_per_t) * rays.directions  # (B, R*R, 3) world
    return (points.abs().amax(-1) <= box_warp / 2).reshape(b, 1, side, side)


def depth_regions(batch: Triplets, alpha: torch.Tensor, box_warp: float, min_alpha: float) -> dict[str, torch.Tensor]:
    """The pixels (B, 1, R, R) bool a depth is scored on: every pixel with a true depth (""); those whose true surface
    is inside the triplane's cube ("_in_volume"); those where the render keeps a depth ("_kept": its alpha at least
    ``min_alpha``, as ``gazegen synthesize`` writes depth, SynthConfig.depth_min_alpha)."""
    valid = batch.depth_valid
    return {"": valid, "_in_volume": valid & in_volume(batch.depth_prior, batch.camera, box_warp),
            "_kept": valid & (alpha >= min_alpha)}


@torch.no_grad()
def score(model: LiveGaze | str, dataset: TripletDataset, same: list, new: list, auto: list = (),
          view: list = (), neural: int = 64, head: torch.Tensor | None = None) -> dict[str, float]:
    """The metrics of (a) to (d) of ``model``, or of the baselines "copy", "flat" (copy with flat eyes) and
    "perfect" (the target area-shrunk to the ``neural`` px of a neural render, then bicubic back: a flawless
    neural render plain-upsampled, the ceiling of a render that the super-resolution only interpolates).

    ``head``: the mean head (V, 1, R, R) (evaluation/depth_baseline.py), scored in (d) on the model's own pixels
    of each region (``d/mean_head_l1_mm*``)."""
    values: dict[str, list[float]] = {}
    add = lambda key, v: values.setdefault(key, []).extend(torch.as_tensor(v, dtype=torch.float64).reshape(-1).tolist())  # noqa: E731
    min_alpha = SynthConfig().depth_min_alpha

    def predict(batch: Triplets, chosen: list) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        size = batch.target.shape[-1]
        if model == "flat":
            return flat_eyes(dataset, chosen, size), None, None
        if model == "copy":
            return resize_tensor(batch.source, size), None, None
        if model == "perfect":
            low = F.interpolate(batch.target, size=(neural, neural), mode="area")
            return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1), None, None
        out = model(batch.source, batch.gaze_head, batch.camera, batch.source_camera)
        return out.image.clamp(-1, 1), out.depth, out.alpha

    for name, chosen in (("a", same), ("b", new), ("c", auto), ("d", view)):
        if model == "flat" and name in "cd":
            continue
        for start in range(0, len(chosen), 8):
            batch = Triplets.cat([dataset.load(*p) for p in chosen[start : start + 8]])
            image, depth, alpha = predict(batch, chosen[start : start + 8])
            add(f"{name}/psnr_eyes", metrics.masked_psnr(image, batch.target, batch.eye_mask))
            add(f"{name}/psnr_face", metrics.masked_psnr(image, batch.target, batch.face_mask))
            if name == "b":
                black = lambda x: torch.where(batch.face_mask > 0.5, x, torch.full_like(x, -1.0))  # noqa: E731
                add("b/ssim_face", metrics.ssim(black(image), black(batch.target)))
                add("b/ssim_eyes", [eye_crop_ssim(image[i], batch.target[i], batch.eye_mask[i]) for i in range(len(batch))])
            if name not in "bd" or depth is None:
                continue
            cams = [int(dataset.subjects[k].labels.cam_index[t]) for k, _, t in chosen[start : start + 8]]
            valid_count = batch.depth_valid.flatten(1).sum(1)
            for region, mask in depth_regions(batch, alpha, model.cfg.render.box_warp, min_alpha).items():
                add(f"{name}/depth_l1_mm{region}", depth_l1_mm(depth, batch.depth_prior, mask, batch.mm_per_unit))
                if region:
                    add(f"{name}/depth_share{region}", mask.flatten(1).sum(1) / valid_count)
                if name == "d" and head is not None:
                    add(f"d/mean_head_l1_mm{region}", depth_l1_mm(head[cams], batch.depth_prior, mask, batch.mm_per_unit))
    return {k: metrics.summarise(torch.tensor(v)).value for k, v in values.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gazegen-learning"), help="store/ and run/ go here")
    parser.add_argument("--config", type=Path, default=CONFIG_DIR / "train" / "demo.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override a TrainConfig key")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the config's max_steps)")
    parser.add_argument("--eval-every", type=int, default=150)
    parser.add_argument("--pairs", type=int, default=48, help="pairs per held-out subject, for each of (a) to (d)")
    parser.add_argument("--checkpoint", type=Path, help="score this checkpoint only (no training); needs --store")
    parser.add_argument("--store", type=Path, help="with --checkpoint: the store whose test subjects are scored")
    args = parser.parse_args()
    if args.checkpoint is not None:
        return score_checkpoint(args.checkpoint, args.store, args.pairs)

    store, run = args.work / "store", args.work / "run"
    if not (store / "train_test_split.json").is_file():
        print(f"making the store {store}: {STORE.subjects} subjects x {STORE.gazes} gazes x {STORE.rig.views} cameras at {STORE.resolution} px")
        synthesize_store(store, STORE)
    shutil.rmtree(run, ignore_errors=True)
    cfg = load_config(TrainConfig, args.config, args.overrides)
    steps = args.steps or cfg.max_steps
    model_cfg = cfg.model_config()
    test = [read_subject(p) for p in store_splits(store).split("test")]
    dataset = TripletDataset(test, TripletSizes.for_model(model_cfg), DatasetDepth(), seed=0)
    same, new = pairs(dataset, args.pairs, True, 0), pairs(dataset, args.pairs, False, 0)
    print(f"config {args.config} {' '.join(args.overrides)}; {steps} steps; held out: {', '.join(s.subject for s in test)}; "
          f"{len(same)} pairs (a), {len(new)} pairs (b); cores {os.cpu_count()}, torch threads {torch.get_num_threads()}")

    copy, flat = score("copy", dataset, same, new), score("flat", dataset, same, new)
    torch.manual_seed(cfg.seed)
    rows = [{"step": 0, "train_s": 0.0, "load": os.getloadavg()[0], **score(LiveGaze(model_cfg).eval(), dataset, same, new)}]
    trained = 0.0
    for stop in range(args.eval_every, steps + args.eval_every, args.eval_every):
        stop = min(stop, steps)
        started = time.perf_counter()
        result = run_training(cfg, store, run, max_steps=stop, resume=stop > args.eval_every)
        trained += time.perf_counter() - started
        model = load_checkpoint(result.checkpoint).eval()
        rows.append({"step": result.step, "train_s": trained, "load": os.getloadavg()[0], **score(model, dataset, same, new)})
        print(f"step {result.step}: {json.dumps({k: round(v, 3) for k, v in rows[-1].items()})}", flush=True)
        if stop == steps:
            break

    header = (f"{'':>6} {'step':>5} {'train s':>8} {'load':>5} | {'(a) eyes':>8} {'face':>6} | {'(b) face':>8} {'ssim':>6} "
              f"{'eyes':>6} {'ssim':>6} {'depth mm':>8}")
    print("\n(a) new gaze, same camera: PSNR dB over the target's eyes / face; (b) new gaze and camera: PSNR dB, SSIM, depth L1")
    print(header + "\n" + "-" * len(header))
    fmt = lambda v, w=6, p=2: f"{'n/a':>{w}}" if v is None else f"{v:{w}.{p}f}"  # noqa: E731
    for name, r in [("copy", {"step": "", "train_s": None, "load": None, **copy}),
                    ("flat", {"step": "", "train_s": None, "load": None, **flat})] + [("model", r) for r in rows]:
        print(f"{name:>6} {r['step']:>5} {fmt(r['train_s'], 8, 0)} {fmt(r['load'], 5, 1)} | {fmt(r['a/psnr_eyes'], 8)} "
              f"{fmt(r['a/psnr_face'])} | {fmt(r['b/psnr_face'], 8)} {fmt(r['b/ssim_face'], 6, 3)} {fmt(r['b/psnr_eyes'])} "
              f"{fmt(r['b/ssim_eyes'], 6, 3)} {fmt(r.get('b/depth_l1_mm'), 8, 1)}")
    print("copy: the source image unchanged; flat: the source with its eye region filled by the region's mean colour")
    last = rows[-1]
    verdict = "beats" if last["a/psnr_eyes"] > copy["a/psnr_eyes"] else "does NOT beat"
    print(f"\n(a) after {last['step']} steps the model {verdict} copy-the-source on the held-out eyes: "
          f"{last['a/psnr_eyes']:.2f} dB vs {copy['a/psnr_eyes']:.2f} dB (flat eyes: {flat['a/psnr_eyes']:.2f} dB)")
    (args.work / "learning.json").write_text(json.dumps({"copy": copy, "flat": flat, "rows": rows, "steps": steps,
                                                         "config": str(args.config), "overrides": args.overrides}, indent=1))


def score_checkpoint(checkpoint: Path, store: Path, per_subject: int) -> None:
    """(c) autoencoding and (d) novel views of one checkpoint on the store's test subjects, beside copy."""
    model = load_checkpoint(checkpoint).eval()
    test = [read_subject(p) for p in store_splits(store).split("test")]
    dataset = TripletDataset(test, TripletSizes.for_model(model.cfg), DatasetDepth(), seed=0)
    auto = [(k, r, r) for k, _, r in pairs(dataset, per_subject, True, 0, same_frame=True)]
    view = pairs(dataset, per_subject, False, 0, same_frame=True)
    train = [read_subject(p) for p in store_splits(store).split("train")]
    head = mean_head_depth(TripletDataset(train, TripletSizes.for_model(model.cfg), DatasetDepth(), seed=0))
    ours, copy = score(model, dataset, [], [], auto, view, head=head), score("copy", dataset, [], [], auto, view)
    side = model.cfg.render.neural_resolution
    perfect = score("perfect", dataset, [], [], auto, [], neural=side)
    print(f"{checkpoint} on {', '.join(s.subject for s in test)} of {store} ({len(auto)} + {len(view)} pairs)")
    print(f"(c) autoencoding, face PSNR: {ours['c/psnr_face']:.2f} dB (eyes {ours['c/psnr_eyes']:.2f} dB); a perfect "
          f"{side} px render, bicubic to {model.cfg.output_resolution} px: {perfect['c/psnr_face']:.2f} dB "
          f"(eyes {perfect['c/psnr_eyes']:.2f} dB)")
    print(f"(d) novel view (same gaze, another camera), face PSNR: {ours['d/psnr_face']:.2f} dB vs copy-the-source "
          f"{copy['d/psnr_face']:.2f} dB ({ours['d/psnr_face'] - copy['d/psnr_face']:+.2f} dB)")
    print(f"    depth L1, the model vs the mean head (per camera, the median depth of the store's {len(train)} training "
          "subjects, no image: a model below it reads the head in front of it):")
    for region, what in (("", "all"),
                         ("_in_volume", "where the true surface lies inside the triplane's cube; beyond it, mostly "
                                        "shoulders, only the mean planes and pixel features reach"),
                         ("_kept", f"where the render keeps a depth (alpha >= {SynthConfig().depth_min_alpha}, as "
                                   "`gazegen synthesize` writes it)")):
        share = f"{100 * ours['d/depth_share' + region]:.1f}%" if region else "100%"
        print(f"      {ours['d/depth_l1_mm' + region]:5.2f} vs {ours['d/mean_head_l1_mm' + region]:5.2f} mm  {share:>6} of "
              f"them: {what}")


if __name__ == "__main__":
    main()
