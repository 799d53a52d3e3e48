"""The training loop (train/trainer.py): it learns, resumes exactly, stops on NaN and Ctrl-C, and says what is missing."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from gazegen.checkpoint import load_checkpoint, load_train_state
from gazegen.config import RigConfig, SynthHeadsConfig, TrainConfig, load_config
from gazegen.data.heads import synthesize_store
from gazegen.models.livegaze import LiveGaze
from gazegen.data.splits import store_splits
from gazegen.train.data import TripletDataset, Triplets, TripletSizes
from gazegen.train.depth_prior import DatasetDepth
from gazegen.train.losses import LiveGazeLoss, masked_l1_loss
from gazegen.train.subjects import read_subject
from gazegen.train.errors import TrainingError
from gazegen.train.optim import build_optimizer
from gazegen.train.trainer import checkpoint_dirs, forward_backward, run_training
from small_sets import own_camera_batch

FAST = ["model=model/tiny.toml", "loss.perceptual=false", "optim.lr_encoder=2e-3", "optim.lr_renderer=2e-3",
        "optim.lr_gaze=2e-3", "data.val_samples=4", "data.workers=0", "log_every=1", "tensorboard=false"]


def config(*extra: str) -> TrainConfig:
    return load_config(TrainConfig, None, [*FAST, *extra])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """3 procedural subjects (train, validation, test) x 3 gazes x 4 cameras at 64 px: 3 steps per epoch."""
    cfg = SynthHeadsConfig(subjects=3, resolution=64, gazes=3, test_subjects=1, rig=RigConfig(views=4))
    return synthesize_store(tmp_path_factory.mktemp("trainer") / "heads", cfg, workers=1)


def best_flat_colour_l1(target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The masked L1 of the best constant colour per image: each channel's median over the mask (an oracle floor)."""
    flat = [t[:, m[0] > 0].median(1).values[:, None, None].expand_as(t) for t, m in zip(target, mask)]
    return masked_l1_loss(torch.stack(flat), target, mask)


def test_a_fixed_batch_is_overfit(store):
    # Two triplets, tiny, 160 steps. The loss halves, and the eye term goes below the best flat colour: the network
    # draws irises and pupils rather than averaging the eye region (measured on an AMD EPYC: total 3.01 -> 0.61, eyes
    # 0.18 against a flat floor of 0.54). At PyTorch's default initialisation the eye term sat at the flat floor for
    # ~80 steps, because the triplane barely depended on the input (gazegen/models/init.py). 160, not 80, steps: at
    # 80, 2 of 11 seeds (CPUs round differently, as seeds do) missed a bar (loss ratio up to 0.56, eyes up to 0.90 of
    # the floor); at 160 the worst of the 11 is 0.37 and 0.43.
    cfg = config()
    model_cfg = cfg.model_config()
    data = TripletDataset([read_subject(p) for p in store_splits(store).split("train")], TripletSizes.for_model(model_cfg),
                          DatasetDepth())
    batch = Triplets.cat([data[(0, i)] for i in (0, 10)])
    torch.manual_seed(0)
    model = LiveGaze(model_cfg).train()
    loss_fn = LiveGazeLoss(cfg.loss)
    optimizer = build_optimizer(model, load_config(type(cfg.optim), None, ["lr_encoder=3e-3", "lr_renderer=3e-3", "lr_gaze=3e-3"]))
    first = None
    for _ in range(160):
        terms, grad_norm = forward_backward(model, batch, loss_fn, cfg.optim.grad_clip)
        assert torch.isfinite(grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        first = first or terms
    assert terms.total.item() <= 0.5 * first.total.item(), (first.scalars(), terms.scalars())
    assert terms.eyes.item() <= 0.8 * best_flat_colour_l1(batch.target, batch.eye_mask).item(), terms.scalars()


def test_resume_gives_the_weights_of_an_uninterrupted_run(store, tmp_path):
    # dropout on, ray jitter on, a loader worker, warm-up + cosine, validation and checkpoints mid-run
    cfg = config("max_steps=6", "val_every=3", "checkpoint_every=2", "keep_checkpoints=2", "data.workers=1",
                 "optim.warmup_steps=2", "optim.decay=cosine", "tensorboard=true")
    whole = run_training(cfg, store, tmp_path / "whole")
    first = run_training(cfg, store, tmp_path / "parts", max_steps=3)
    assert (first.status, first.step) == ("stopped", 3)
    second = run_training(cfg, store, tmp_path / "parts", resume=True)
    assert (whole.status, whole.step, second.status, second.step) == ("finished", 6, "finished", 6)
    a, b = load_checkpoint(whole.checkpoint).state_dict(), load_checkpoint(second.checkpoint).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise
    sa, sb = load_train_state(whole.checkpoint), load_train_state(second.checkpoint)
    assert sa["step"] == sb["step"] == 6 and torch.equal(sa["rng"][0]["torch"], sb["rng"][0]["torch"])
    assert [p.name for p in checkpoint_dirs(tmp_path / "whole")] == ["step_0000004", "step_0000006"]  # keep 2
    # what the run wrote
    run = tmp_path / "parts"
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == [1, 2, 3, 4, 5, 6]  # one history, no duplicates across the resume
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in val] == [3, 6]  # 3: every 3 steps and the end of the first part (once)
    assert all(r["psnr_eyes"] > 0 and r["depth_l1_mm"] > 0 for r in val)
    assert (run / "loss_curve.png").stat().st_size > 0 and len(list((run / "val").glob("step_*.png"))) == 2
    assert any((run / "tensorboard").iterdir())
    assert json.loads((run / "train_config.json").read_text())["train"]["max_steps"] == 6


def test_a_run_folder_is_not_overwritten_and_resume_keeps_the_runs_settings(store, tmp_path):
    cfg = config("max_steps=1", "val_every=0")
    run_training(cfg, store, tmp_path / "run")
    with pytest.raises(TrainingError, match="already holds a run"):
        run_training(cfg, store, tmp_path / "run")
    with pytest.raises(TrainingError, match=r'max_steps: 1 -> 2; model_overrides: \[\] -> \["gaze_tokens=2"\]'):
        run_training(config("max_steps=2", "model_overrides=['gaze_tokens=2']"), store, tmp_path / "run", resume=True)
    with pytest.raises(TrainingError, match="nothing to resume"):
        run_training(cfg, store, tmp_path / "empty", resume=True)


def test_training_on_the_cpu_flushes_subnormal_floats(store, tmp_path):
    """A trained field's transmittance falls below float32's smallest normal (1.2e-38); the trainer flushes such
    values to zero, which the CPU otherwise computes slowly (benchmarks/train_step.py)."""
    subnormal = torch.tensor([1e-39])  # float32: below 2**-126, so stored as a subnormal
    torch.set_flush_denormal(False)
    assert (subnormal * 2).item() == pytest.approx(2e-39, rel=1e-3)
    try:
        run_training(config("max_steps=1", "val_every=0", "device=cpu"), store, tmp_path / "run")
        assert (subnormal * 2).item() == 0.0  # read as zero: flushed
    finally:
        torch.set_flush_denormal(False)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(store, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = TripletDataset.__getitem__

    def poisoned(self, item):
        calls["n"] += 1
        t = original(self, item)
        if calls["n"] > 4 * 4:  # from the 5th batch on: a NaN in the source image
            t.source[..., 0, 0] = float("nan")
        return t

    monkeypatch.setattr(TripletDataset, "__getitem__", poisoned)
    cfg = config("max_steps=8", "val_every=0", "checkpoint_every=2")
    with pytest.raises(TrainingError, match=r"non-finite loss or gradient at step 5 .*last good checkpoint is .*step_0000004"):
        run_training(cfg, store, tmp_path / "run")
    assert [p.name for p in checkpoint_dirs(tmp_path / "run")] == ["step_0000002", "step_0000004"]
    model = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000004")
    assert all(torch.isfinite(p).all() for p in model.state_dict().values())
    assert load_train_state(tmp_path / "run" / "checkpoints" / "step_0000004")["step"] == 4
    events = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert "non-finite" in events[-1]["message"]


def test_ctrl_c_saves_a_checkpoint(store, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = TripletDataset.__getitem__

    def interrupting(self, item):
        calls["n"] += 1
        if calls["n"] == 2 * 4 + 1:  # while loading the 3rd batch
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, item)

    monkeypatch.setattr(TripletDataset, "__getitem__", interrupting)
    before = signal.getsignal(signal.SIGINT)  # not always Python's default: Ray Train installs its own
    result = run_training(config("max_steps=20", "val_every=0", "checkpoint_every=0"), store, tmp_path / "run")
    assert (result.status, result.step) == ("interrupted", 3)  # the step in progress finishes, then a checkpoint
    assert result.checkpoint.name == "step_0000003" and load_train_state(result.checkpoint)["step"] == 3
    assert signal.getsignal(signal.SIGINT) is before  # the handler is restored


def test_missing_vgg_weights_stop_training_with_where_to_put_them(store, tmp_path, monkeypatch):
    monkeypatch.setenv("GAZEGEN_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(TrainingError, match=r"(?s)vgg16-397923af\.pth.*weights.*loss\.perceptual = false") as info:
        run_training(config("loss.perceptual=true", "max_steps=1"), store, tmp_path / "run")
    assert "download.pytorch.org" in str(info.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_reconstruction_stage_leaves_the_gaze_path_as_it_starts(store, tmp_path):
    """Stage "reconstruction": the gaze modules stay at their start (the zero cross-attention output: F_app = F_h)."""
    cfg = config("max_steps=3", "stage=reconstruction", "val_every=0", "loss.alpha_weight=1", "loss.raw_weight=1")
    result = run_training(cfg, store, tmp_path / "prior")
    torch.manual_seed(cfg.seed)
    start = LiveGaze(cfg.model_config()).state_dict()
    trained = load_checkpoint(result.checkpoint).state_dict()
    gaze = [k for k in start if k.startswith(("gaze_encoder.", "gaze_fusion."))]
    assert gaze and all(torch.equal(start[k], trained[k]) for k in gaze)
    assert not torch.equal(start["decoder.net.0.weight"], trained["decoder.net.0.weight"])  # the rest did train
    assert torch.count_nonzero(trained["gaze_fusion.proj_out.weight"]) == 0
    follow = run_training(config("max_steps=2", f"init={result.checkpoint}", "val_every=0"), store, tmp_path / "gaze")
    moved = load_checkpoint(follow.checkpoint).state_dict()  # a gaze run initialised from the prior trains the gaze path
    assert torch.count_nonzero(moved["gaze_fusion.proj_out.weight"]) > 0


def test_a_small_set_is_autoencoded_and_the_output_follows_its_source(tmp_path):
    """The prior's task on tiny with plane lifting and pixel features: four procedural images from their own cameras.

    Measured (tiny, lift 8, 4 pixel channels, seed 0, 300 steps, ~45 s): see the asserted bars; without the pixel
    features 19.1 dB; before plane lifting, the silhouette and raw-render terms, the opacity stayed a uniform fog
    and the face PSNR near 15 dB. Trained for 800 steps: at 300 the face PSNR of seeds 0-5 was 20.55-21.05 dB on an
    AMD EPYC (21.5 at seed 0 on an Intel Xeon), a hair above the bar, and PSNR does not rise steadily with the steps
    (seed 4: 20.98, 20.81, 20.12, 21.12, 21.53 dB at 300, 400, 500, 600, 800); at 800 the worst seed gives 21.53.
    """
    import dataclasses

    from gazegen.metrics import scores as metrics

    heads = SynthHeadsConfig(subjects=2, test_subjects=0, resolution=64, gazes=1, seed=4,
                             rig=RigConfig(views=2, max_yaw_deg=20.0, max_pitch_deg=10.0))
    store = synthesize_store(tmp_path / "heads", heads, workers=1)
    cfg = config("stage=reconstruction", "loss.raw_weight=1", "loss.alpha_weight=1")
    model_cfg = dataclasses.replace(cfg.model_config(), lift_samples=8, eg3d_plane_axes=False, coord_channels=False,
                                    aspp_dropout=0.0, pixel_channels=4)
    batch = own_camera_batch(store, model_cfg)  # 4 images
    torch.manual_seed(0)
    model = LiveGaze(model_cfg).train()
    loss_fn = LiveGazeLoss(cfg.loss)
    optimizer = build_optimizer(model, load_config(type(cfg.optim), None, ["lr_encoder=3e-3", "lr_renderer=3e-3"]), ("gaze",))
    for _ in range(800):
        forward_backward(model, batch, loss_fn, cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        out = model(batch.source, batch.gaze_head, batch.camera, batch.source_camera)
        swap = torch.roll(torch.arange(4), 2)  # the other subject's image, from the same camera
        swapped = model(batch.source[swap], batch.gaze_head, batch.camera, batch.source_camera[swap])
    psnr = metrics.masked_psnr(out.image.clamp(-1, 1), batch.target, batch.face_mask)
    head = torch.nn.functional.interpolate(batch.depth_valid.float(), size=out.alpha.shape[-2:], mode="area") >= 0.5
    inside, outside = out.alpha[head].mean(), out.alpha[~head].mean()
    faces = batch.face_mask * batch.face_mask[swap]  # where both images show a face: the background is unsupervised
    change = metrics.masked_mean((out.image - swapped.image).abs().mean(1, keepdim=True), faces).mean()
    data_change = metrics.masked_mean((batch.target - batch.target[swap]).abs().mean(1, keepdim=True), faces).mean()
    print(f"face PSNR {psnr.tolist()}, alpha inside {inside:.3f} outside {outside:.3f}, swap {change:.3f} vs {data_change:.3f}")
    assert psnr.mean() >= 20.5, psnr  # measured 22.2 dB (the 25 dB bar is for the demo prior, not this test)
    assert inside > 5 * outside  # a silhouette: measured 0.98 inside the head, 0.002 outside
    assert change >= 0.6 * data_change  # the output follows its source: measured 0.180 against the faces differing by 0.194


def test_weights_of_other_shapes_are_refused_in_one_line_with_the_way_out(tmp_path):
    """One line: the checkpoint, how many tensors differ (here the two made to), one with both shapes, and the hint."""
    from gazegen.checkpoint import save_pretrained
    from gazegen.config import to_dict
    from gazegen.train.init_weights import initialise, load_grown, own_model_hint

    torch.manual_seed(0)
    model_cfg = config().model_config()
    model = LiveGaze(model_cfg)
    state = model.state_dict()
    hidden = model_cfg.render.decoder_hidden
    state["decoder.net.0.bias"] = torch.zeros(hidden + 3)
    state["decoder.net.0.weight"] = torch.zeros(hidden + 3, *state["decoder.net.0.weight"].shape[1:])
    with pytest.raises(TrainingError) as err:
        load_grown(LiveGaze(model_cfg), state, tmp_path / "prior", "HINT")
    assert str(err.value) == (f"{tmp_path / 'prior'}: its weights do not fit this model: 2 of its {len(state)} tensors differ "
                              f"in shape, e.g. decoder.net.0.bias ({hidden + 3},) in the checkpoint, ({hidden},) in the model; "
                              "HINT")
    assert own_model_hint({"train_config": {"model": "model/demo.toml", "model_overrides": ["mean_planes=true"]}}) == (
        'train with its own model (model = "model/demo.toml", model_overrides = ["mean_planes=true"], as its run did) '
        "or choose another init")
    assert own_model_hint({"train_config": {"model": "model/tiny.toml", "model_overrides": []}}) == (
        'train with its own model (model = "model/tiny.toml", as its run did) or choose another init')
    assert own_model_hint({}) == 'train with the model it was saved with (its config.json\'s "config") or choose another init'
    # a checkpoint named as init: its run's model is named from its metadata
    wider = config(f'model_overrides=["render.decoder_hidden={hidden * 2}"]')
    saved = save_pretrained(tmp_path / "ckpt", LiveGaze(wider.model_config()), metadata={"train_config": to_dict(wider)})
    with pytest.raises(TrainingError) as err:
        initialise(LiveGaze(model_cfg), str(saved))
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{saved}: its weights do not fit this model: ")
    assert message.endswith(f'(model = "model/tiny.toml", model_overrides = ["render.decoder_hidden={hidden * 2}"], as its '
                            "run did) or choose another init")


@pytest.mark.parametrize("total,step,max_steps,stop,warning", [
    (20, 0, None, 20, None),
    (20, 0, 5, 5, None),  # an early stop
    (20, 0, 20, 20, None),
    (20, 0, 25, 20, "--max-steps 25 is past the run's schedule (max_steps = 20): it stops at 20"),
    (20, 10, 15, 15, None),
    (20, 10, 10, 10, "--max-steps 10 is at or below the step the run is at (10): it trains no step and stops at 10"),
    (20, 10, 4, 10, "--max-steps 4 is at or below the step the run is at (10): it trains no step and stops at 10"),
])
def test_max_steps_past_the_schedule_or_behind_the_run_is_said(total, step, max_steps, stop, warning, caplog):
    from gazegen.train.trainer import stop_step

    with caplog.at_level("WARNING", logger="gazegen.train"):
        assert stop_step(total, step, max_steps, f"max_steps = {total}") == stop
    assert [r.getMessage() for r in caplog.records] == ([warning] if warning else [])
    caplog.clear()
    assert stop_step(total, step, max_steps, f"max_steps = {total}", warn=False) == stop  # other ranks: silent
    assert caplog.records == []
