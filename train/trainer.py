"""The LiveGaze training loop (paper sections 3.4 and 4.1): `gazegen train`.

    RUN/train_config.json                 the TrainConfig, the model config and the data path
    RUN/checkpoints/step_NNNNNNN/         config.json + model.safetensors + train_state.pt (gazegen.checkpoint)
    RUN/log.jsonl, tensorboard/, loss_curve.png, val/step_NNNNNNN.png   (train/logging.py)
    RUN/depth_prior/                      the teacher's cached depths (depth_prior.kind = "teacher")

Steps: (1) data split, depth prior, datasets, checked before any model or run folder (a resume must
keep the run's own settings, train/resume.py; a store without the depth the prior reads is refused);
(2) model (random, Live3D or checkpoint init), AdamW with one group per part, schedule; (3) on
resume: weights, optimiser, scheduler, every rank's RNG and the data position (= the step: batches
are a function of the step, train/data.py) from the newest checkpoint, whose architecture must be the
run's recorded model; (4) per step: forward under bf16 autocast on CUDA, the paper's losses,
backward, gradient clipping, AdamW; a non-finite loss or gradient stops the run before the update,
the last good checkpoint untouched; (5) logs, validation and checkpoints every N steps; a checkpoint
at the end and on Ctrl-C (`gazegen train` then exits 130).

Data parallel (train/distributed.py) runs this same loop on every rank with a ``DistContext``:
each rank loads its share of the global batch; rank 0 validates, logs and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from gazegen.allocator import keep_freed_memory
from gazegen.checkpoint import CheckpointError, load_checkpoint, load_train_state, save_pretrained
from gazegen.config import ModelConfig, TrainConfig, to_dict
from gazegen.config.model import with_runtime_render
from gazegen.device import torch_device
from gazegen.models.livegaze import LiveGaze
from gazegen.weights import MissingWeightsError
from gazegen.train.data import TripletBatchSampler, TripletDataset, Triplets, TripletSizes, fixed_batches, make_loader
from gazegen.train.depth_prior import depth_source, prepare_teacher_prior
from gazegen.train.errors import TrainingError
from gazegen.train.init_weights import initialise
from gazegen.train.interrupt import Interrupt
from gazegen.train.logging import RunLog
from gazegen.train.losses import LiveGazeLoss, LossOutput, empty_margin_loss
from gazegen.train.optim import FROZEN, build_optimizer, build_scheduler
from gazegen.train.preflight import checked_store
from gazegen.train.resume import RECORD, differences, read_record
from gazegen.train.rng import rng_state, set_rng_state
from gazegen.train.subjects import common_normalisation
from gazegen.train.validate import prediction_grid, validate

log = logging.getLogger("gazegen.train")

CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class DistContext:
    """Where this copy of the loop runs: a single process by default, or one rank of a data-parallel group."""

    rank: int = 0
    world_size: int = 1
    device: str | None = None  # None: TrainConfig.device
    wrap_model: Callable[[nn.Module], nn.Module] | None = None  # e.g. DistributedDataParallel

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class TrainResult:
    run: Path
    checkpoint: Path | None  # the last checkpoint written
    step: int
    status: str  # "finished" (the schedule's last step), "stopped" (--max-steps), "interrupted" (Ctrl-C)
    metrics: dict[str, float] = field(default_factory=dict)  # the last validation


def pick_device(name: str) -> torch.device:
    """The config's ``device``: "auto" is CUDA when this torch sees a GPU, else the CPU; any other
    name must exist here (gazegen/device.py: one line naming the key, not torch's traceback)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch_device(name, given_as="device =")


def build_loss(cfg: TrainConfig) -> LiveGazeLoss:
    """The paper's objective; a missing VGG16 stops here with the file, the folders and the way to turn L_P off."""
    try:
        return LiveGazeLoss(cfg.loss)
    except MissingWeightsError as e:
        raise TrainingError(f"{e}\nTo train without the perceptual loss L_P instead, set loss.perceptual = false "
                            "(--set loss.perceptual=false).") from None


def _step_of(path: Path) -> int:
    """The step of a checkpoint folder ``step_NNNNNNN`` (-1 for another name)."""
    number = path.name.removeprefix("step_")
    return int(number) if number.isdigit() else -1


def checkpoint_dirs(run: Path, holding: str = "train_state.pt") -> list[Path]:
    """A run's step checkpoints holding ``holding`` (train_state.pt: complete, resumable; config.json: a model to load),
    oldest first."""
    dirs = [p for p in (Path(run) / CHECKPOINTS).glob("step_*") if _step_of(p) >= 0 and (p / holding).is_file()]
    return sorted(dirs, key=_step_of)


def latest_checkpoint(run: Path) -> Path | None:
    dirs = checkpoint_dirs(run)
    return dirs[-1] if dirs else None


# --------------------------------------------------------------------------- collectives


def _distributed(ctx: DistContext) -> bool:
    return ctx.world_size > 1 and dist.is_available() and dist.is_initialized()


def _gather(obj, ctx: DistContext) -> list:
    if not _distributed(ctx):
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def _mean(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if _distributed(ctx):
        dist.all_reduce(values)
        values = values / ctx.world_size
    return values


# --------------------------------------------------------------------------- the loop


def forward_backward(net: nn.Module, batch: Triplets, loss_fn: LiveGazeLoss, grad_clip: float,
                     autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
                     ) -> tuple[LossOutput, torch.Tensor]:
    """One step's gradients: I_g, D_g = net(I_s, g, c) (Fig. 2); the paper's losses; backward; clipping.

    Returns the loss terms and the gradient norm before clipping (``grad_clip`` 0: no clipping).
    """
    with autocast():
        out = net(batch.source, batch.gaze_head, batch.camera, batch.source_camera)
        terms = loss_fn.on_batch(out, batch)
        if loss_fn.config.margin_weight > 0:
            sources = out.triplane if loss_fn.config.margin_sources else None
            margin = empty_margin_loss(getattr(net, "module", net), loss_fn.config.margin_points, sources)
            terms = replace(terms, margin=margin, total=terms.total + loss_fn.config.margin_weight * margin)
    terms.total.backward()
    params = [p for p in net.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
    return terms, grad_norm


def run_training(cfg: TrainConfig, data: Path, out: Path, max_steps: int | None = None, resume: bool = False,
                 *, context: DistContext = DistContext()) -> TrainResult:
    """`gazegen train`: train on the store ``data`` into the run folder ``out``; ``max_steps`` stops early;
    ``resume``: continue ``out``, whose recorded settings ``cfg`` and ``data`` must keep (train/resume.py)."""
    data, out = Path(data), Path(out)
    device = pick_device(context.device or cfg.device)  # a device this machine lacks fails before any data is read
    # a data-parallel run's driver has checked the store and warned already (train/distributed.py)
    train, val = checked_store(cfg, data, out, resume, warn=context.world_size == 1)
    # a resumed run's model is the one it recorded (its preset may have changed since); fit checks it against the checkpoint
    model_cfg = read_record(out).model if resume else cfg.model_config()
    use_depth = cfg.loss.depth_weight > 0
    if use_depth and cfg.depth_prior.kind == "teacher":
        if context.is_main:
            prepare_teacher_prior(cfg.depth_prior, train + val, out, device)
        if _distributed(context):
            dist.barrier()
    depth = depth_source(cfg.depth_prior, out, enabled=use_depth)
    sizes = TripletSizes.for_model(model_cfg)
    same_frame = cfg.stage == "reconstruction"
    dataset = functools.partial(TripletDataset, sizes=sizes, depth=depth, seed=cfg.seed, same_frame=same_frame,
                                same_camera=cfg.data.same_camera)
    train_set = dataset(train, world_turn_deg=cfg.data.world_turn_deg, world_turn_share=cfg.data.world_turn_share)  # validation: exact
    val_set = dataset(val) if val else None
    return fit(cfg, model_cfg, train_set, val_set, out, max_steps=max_steps, resume=resume, init=cfg.init,
               context=context, metadata={"data": str(data.resolve()), "normalisation": to_dict(common_normalisation(train + val))})


@dataclass
class _State:
    """What a run trains and where it stands: built by ``_setup``, advanced by ``_Loop``."""

    model: LiveGaze
    net: nn.Module  # ``model``, or the context's wrapper of it (DistributedDataParallel)
    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    loss_fn: LiveGazeLoss
    device: torch.device
    step: int  # steps done: the data position of the run
    steps_per_epoch: int
    total: int  # the schedule's length
    stop: int  # the step this call stops at (``max_steps``)
    newest: Path | None  # the checkpoint resumed from
    how: str  # how the weights started, for the log


def _check_run(run: Path, resume: bool) -> Path | None:
    """The newest checkpoint of ``run``; TrainingError when resuming nothing or starting over a run. A resume says which
    later step folders it passes over (no train_state.pt: written part-way)."""
    newest = latest_checkpoint(run)
    if resume and newest is None:
        raise TrainingError(f"{run}: nothing to resume (no checkpoint with a train_state.pt under {run / CHECKPOINTS})")
    if not resume and newest is not None:
        raise TrainingError(f"{run} already holds a run (newest checkpoint {newest}); pass --resume or choose another folder")
    if resume:
        later = sorted((p for p in (run / CHECKPOINTS).glob("step_*") if _step_of(p) > _step_of(newest)), key=_step_of)
        if later:
            log.warning(f"{', '.join(p.name for p in later)}: no train_state.pt (written part-way): resuming from {newest}")
    return newest


def _resumed_model(newest: Path, model_cfg: ModelConfig) -> LiveGaze:
    """The checkpoint's model; its architecture must be ``model_cfg``, the run's recorded model (chunking and skipping:
    ``model_cfg``'s). A damaged one is named with the way back to the checkpoint before it."""
    try:
        model = load_checkpoint(newest)
    except CheckpointError as error:
        before = checkpoint_dirs(newest.parent.parent)[-2:-1]
        back = f"; delete {newest} to resume from {before[0]}" if before else ""
        raise CheckpointError(f"{error}{back}") from error
    model.cfg = with_runtime_render(model.cfg, model_cfg)
    if model.cfg != model_cfg:
        diff = differences(to_dict(model.cfg), to_dict(model_cfg))
        raise TrainingError(f"{newest}: its architecture differs from the run's model (checkpoint -> run): {'; '.join(diff)}. "
                            f"A resumed run keeps the checkpoint's architecture: the \"model\" recorded in "
                            f"{newest.parent.parent / RECORD} must be the checkpoint's")
    return model


def _setup(cfg: TrainConfig, model_cfg: ModelConfig, items: int, run: Path, *, max_steps: int | None, resume: bool,
           init: str, context: DistContext, model: LiveGaze | None) -> _State:
    """Model, optimiser and schedule (steps 2 and 3 of the module's docstring); on resume, their state and every RNG."""
    device = pick_device(context.device or cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cpu":
        # A trained field is opaque: transmittance exp(-optical depth) behind the surface and the
        # softplus of very negative raw densities fall below 1.2e-38, and the CPU computes on such
        # subnormal floats in microcode. Flushing them to zero changes no result above 1e-38 and made
        # a demo training step from the shipped weights 1.3-1.4x faster (benchmarks/train_step.py), a
        # training run on the prior's store 1.65x. Set before the first parallel region: OpenMP's threads
        # take the floating-point mode of the thread that starts them.
        torch.set_flush_denormal(True)
        keep_freed_memory()  # the step's large tensors reuse the last step's pages (gazegen/allocator.py): a demo step 1.08x
    newest = _check_run(run, resume)
    loss_fn = build_loss(cfg).to(device)
    torch.manual_seed(cfg.seed)
    if resume:
        model, how = _resumed_model(newest, model_cfg), f"resumed from {newest}"
    elif model is not None:
        how = "training the given model"
    else:
        model = LiveGaze(model_cfg)
        how = initialise(model, init)
    model.to(device).train()
    optimizer = build_optimizer(model, cfg.optim, FROZEN[cfg.stage])
    steps_per_epoch = items // cfg.batch_size
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    scheduler = build_scheduler(optimizer, cfg.optim, total)
    step = 0
    if resume:
        state = load_train_state(newest)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        rngs = state["rng"]
        set_rng_state(rngs[context.rank % len(rngs)], device)
    else:
        torch.manual_seed(int(np.random.SeedSequence([cfg.seed, context.rank]).generate_state(1)[0]))
    net = context.wrap_model(model) if context.wrap_model else model
    schedule = f"max_steps = {cfg.max_steps}" if cfg.max_steps else f"epochs = {cfg.epochs}: {total} steps"
    stop = stop_step(total, step, max_steps, schedule, warn=context.is_main)
    return _State(model, net, optimizer, scheduler, loss_fn, device, step, steps_per_epoch, total, stop, newest, how)


def stop_step(total: int, step: int, max_steps: int | None, schedule: str, *, warn: bool = True) -> int:
    """The step a run that is at ``step`` stops at: ``max_steps`` (an early stop), never past the schedule's ``total``
    steps nor before ``step``; ``warn``: a warning in one line when ``max_steps`` is past the schedule (``schedule``:
    how it is set, for the message) or at or below the step the run is at, saying where it stops instead."""
    if max_steps is None:
        return total
    stop = max(min(total, max_steps), step)
    if warn and max_steps > total:
        log.warning(f"--max-steps {max_steps} is past the run's schedule ({schedule}): it stops at {stop}")
    elif warn and max_steps <= step:
        log.warning(f"--max-steps {max_steps} is at or below the step the run is at ({step}): it trains no step and "
                    f"stops at {stop}")
    return stop


class _Loop:
    """One step, validation and checkpoints of a run set up by ``_setup`` (steps 4 and 5 of the module's docstring)."""

    def __init__(self, cfg: TrainConfig, st: _State, val_set: TripletDataset | None, run: Path, log: RunLog,
                 context: DistContext, metadata: dict | None):
        self.cfg, self.st, self.val_set, self.run, self.log = cfg, st, val_set, run, log
        self.context, self.metadata, self.main = context, metadata, context.is_main
        self.val_batches = fixed_batches(val_set, cfg.data.val_samples, cfg.batch_size, cfg.seed) if val_set is not None else []
        self.autocast = ((lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cfg.bf16 and st.device.type == "cuda"
                         else contextlib.nullcontext)
        self.last_ckpt, self.last_metrics = st.newest, {}
        self.window: list[torch.Tensor] = []  # per-step values since the last log record
        self.started = time.perf_counter()

    def step(self, batch: Triplets) -> LossOutput:
        """Forward, backward and update on ``batch``; TrainingError before the update when a value is not finite."""
        st = self.st
        terms, grad_norm = forward_backward(st.net, batch, st.loss_fn, self.cfg.optim.grad_clip, self.autocast)
        values = _mean(torch.stack([v.detach().float() for v in vars(terms).values()] + [grad_norm.float()]), self.context)
        if not torch.isfinite(values).all():
            named = {k: round(float(v), 5) for k, v in zip([*terms.scalars(), "grad_norm"], values.tolist())}
            message = (f"non-finite loss or gradient at step {st.step + 1} ({named}); training stopped before the "
                       f"update. The last good checkpoint is {self.last_ckpt or 'none: no checkpoint had been written'}")
            self.log.event(st.step, message)
            raise TrainingError(message)
        st.optimizer.step()
        st.scheduler.step()
        st.optimizer.zero_grad(set_to_none=True)
        st.step += 1
        self.window.append(values.cpu())
        return terms

    def record(self, terms: LossOutput) -> dict:
        """The mean of the values since the last record, the learning rates and the speed, logged as ``train``."""
        st = self.st
        mean = torch.stack(self.window).mean(0).tolist()
        record = dict(zip([*terms.scalars(), "grad_norm"], mean))
        record.update({f"lr/{g['name']}": g["lr"] for g in st.optimizer.param_groups})
        record.update(epoch=st.step / st.steps_per_epoch, steps_per_s=len(self.window) / (time.perf_counter() - self.started))
        self.log.record(st.step, "train", record)
        self.window, self.started = [], time.perf_counter()
        return record

    def save(self, at: int) -> None:
        """A checkpoint of step ``at`` with every rank's RNG (a collective: every rank calls it); old ones pruned."""
        st, cfg = self.st, self.cfg
        rng = _gather(rng_state(st.device), self.context)
        if self.main:
            state = {"step": at, "optimizer": st.optimizer.state_dict(), "scheduler": st.scheduler.state_dict(), "rng": rng,
                     "world_size": self.context.world_size, "steps_per_epoch": st.steps_per_epoch}
            meta = {"step": at, "train_config": to_dict(cfg), "metrics": self.last_metrics, **(self.metadata or {})}
            self.last_ckpt = save_pretrained(self.run / CHECKPOINTS / f"step_{at:07d}", st.model, train_state=state, metadata=meta)
            old = checkpoint_dirs(self.run)[: -cfg.keep_checkpoints] if cfg.keep_checkpoints else []
            for path in old:
                shutil.rmtree(path, ignore_errors=True)
            self.log.event(at, f"checkpoint {self.last_ckpt}")

    def validate(self, at: int) -> None:
        """Validation on the fixed batches (rank 0), its record, prediction grid and the loss curve; RNG untouched."""
        st = self.st
        if not self.main or not self.val_batches:
            return
        with torch.random.fork_rng(devices=[st.device] if st.device.type == "cuda" else []):
            val_iter = (Triplets.cat([self.val_set[item] for item in b]) for b in self.val_batches)
            result = validate(st.model, val_iter, st.loss_fn, st.device, self.autocast(), self.cfg.grid_samples)
        self.last_metrics = result.metrics
        self.log.record(at, "val", result.metrics)
        if result.predictions is not None:
            self.log.image(at, "val", prediction_grid(result.predictions))
        self.log.loss_curve()


def fit(cfg: TrainConfig, model_cfg: ModelConfig, train_set: TripletDataset, val_set: TripletDataset | None, run: Path,
        *, max_steps: int | None = None, resume: bool = False, init: str = "", context: DistContext = DistContext(),
        metadata: dict | None = None, model: LiveGaze | None = None) -> TrainResult:
    """The loop on given datasets (run_training and fine-tuning share it); ``model``: train this one, in place."""
    run, main = Path(run), context.is_main
    st = _setup(cfg, model_cfg, len(train_set), run, max_steps=max_steps, resume=resume, init=init, context=context,
                model=model)
    # (1) data: the position of a run is its step
    sampler = TripletBatchSampler(len(train_set), cfg.batch_size, cfg.seed, st.step, context.rank, context.world_size)
    loader = make_loader(train_set, sampler, cfg.data.workers, cfg.data.prefetch, pin_memory=st.device.type == "cuda")
    log = RunLog(run, enabled=main, tensorboard=cfg.tensorboard, resume_step=st.step if resume else None)
    if main:
        (run / RECORD).write_text(json.dumps(
            {"train": to_dict(cfg), "model": to_dict(model_cfg), **(metadata or {})}, indent=2, sort_keys=True))
    log.event(st.step, f"{st.how}; {len(train_set)} training images, {st.steps_per_epoch} steps per epoch, schedule "
                       f"{st.total} steps, stopping at {st.stop}; device {st.device}, {context.world_size} worker(s)")
    if not st.loss_fn.use_perceptual:
        log.event(st.step, "perceptual loss L_P is off (loss.perceptual = false or loss.perceptual_weight = 0 in the "
                           "config): VGG16 is not loaded")

    status = "finished" if st.stop == st.total else "stopped"
    saved_at = validated_at = st.step if resume else -1  # a resumed run's step has its checkpoint already
    loop = _Loop(cfg, st, val_set, run, log, context, metadata)
    batches = iter(loader)
    progress = tqdm(total=st.stop, initial=st.step, desc="train", disable=not main, dynamic_ncols=True)
    try:
        with Interrupt() as interrupt:
            while st.step < st.stop:
                if interrupt.requested:
                    status = "interrupted"
                    log.event(st.step, "Ctrl-C: stopping with a checkpoint")
                    break
                terms = loop.step(next(batches).to(st.device, non_blocking=True))
                progress.update(1)
                if st.step % cfg.log_every == 0 or st.step == st.stop:
                    progress.set_postfix(loss=f"{loop.record(terms)['loss/total']:.4f}")
                if cfg.val_every and st.step % cfg.val_every == 0:
                    loop.validate(st.step)
                    validated_at = st.step
                if cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0:
                    loop.save(st.step)
                    saved_at = st.step
            if status != "interrupted" and validated_at != st.step:
                loop.validate(st.step)
                validated_at = st.step
            if saved_at != st.step:
                loop.save(st.step)
            log.event(st.step, f"{status} at step {st.step}")
            if validated_at != st.step or not loop.val_batches:
                log.loss_curve()
    finally:
        progress.close()
        log.close()
        del batches
    return TrainResult(run=run, checkpoint=loop.last_ckpt, step=st.step, status=status, metrics=loop.last_metrics)
