"""Training triplets from a store (paper section 3.4, Fig. 2), and the DataLoader that batches them.

A triplet is three images of one subject:

    I_s   source: the model's input                       (another frame and another camera than I_gt)
    I_gt  target: what the model must render, with its face and eye masks, gaze and camera
    I_f   frontal: I_gt's frame (same gaze) from the camera whose head pose is nearest (0, 0)
          in that frame; the teacher depth prior renders it at I_gt's camera

With ``same_frame`` (the reconstruction stage) I_s is instead any camera of I_gt's own frame, I_gt's
camera included: the same gaze, seen from another view or from the same one (autoencoding). With
``same_camera`` = p (the gaze stage), an item instead takes, with probability p, a source of another
frame through I_gt's own camera, when its subject has one: redirection in place.

Every target row is I_gt once per epoch. The source of item ``i`` in epoch ``e`` is drawn from a
generator seeded by (seed, e, i) only, so a batch does not depend on the worker that loads it, on
the number of workers, or on where a resumed run starts: the data position of a run is its step.

Subjects and their rows come from train/subjects.py. Sizes: I_s and I_f are resized to the model's
input side, I_gt and its masks to the output side (gazegen/data/images.py: ``image_tensor`` and
``mask_tensor``; INTER_AREA when shrinking, INTER_CUBIC when growing; masks are area-averaged then
cut at 0.5),
the depth prior to the neural rendering side (valid pixels area-averaged; a pixel is valid when at
least half its area is). Images become float (3, H, W) RGB in [-1, 1]; masks float {0, 1}; depth
is converted from the store's millimetres to renderer world units (gazegen.geometry
.mm_per_world_unit of the subject's normalisation), 0 where invalid.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from gazegen.config import ModelConfig
from gazegen.data.images import image_tensor, mask_tensor
from gazegen.data.sample import Sample
from gazegen.data.xgaze import DataError, SubjectReader, open_subject
from gazegen.train.depth_prior import DepthSource, depth_to_world
from gazegen.train.subjects import SubjectRows
from gazegen.train.world_turn import random_turn, turn_world


# --------------------------------------------------------------------------- batches


@dataclass
class Triplets:
    """B triplets, tensors with a leading batch axis (one item of the dataset is B = 1)."""

    source: torch.Tensor  # (B, 3, S_in, S_in) I_s in [-1, 1]
    target: torch.Tensor  # (B, 3, S_out, S_out) I_gt
    frontal: torch.Tensor  # (B, 3, S_in, S_in) I_f
    face_mask: torch.Tensor  # (B, 1, S_out, S_out) I_gt's face mask {0, 1}
    eye_mask: torch.Tensor  # (B, 1, S_out, S_out) I_gt's eyes (both) {0, 1}
    depth_prior: torch.Tensor  # (B, 1, R, R) D_gt, world units, 0 where invalid
    depth_valid: torch.Tensor  # (B, 1, R, R) bool
    source_depth: torch.Tensor  # (B, 1, R, R) I_s's depth prior, world units, 0 where invalid
    source_depth_valid: torch.Tensor  # (B, 1, R, R) bool
    gaze_head: torch.Tensor  # (B, 2) I_gt's gaze in the head frame: the condition g
    gaze: torch.Tensor  # (B, 2) I_gt's gaze in its camera frame
    camera: torch.Tensor  # (B, 25) I_gt's camera c
    source_gaze_head: torch.Tensor  # (B, 2)
    source_camera: torch.Tensor  # (B, 25)
    frontal_camera: torch.Tensor  # (B, 25)
    mm_per_unit: torch.Tensor  # (B,) millimetres per world unit of each subject's normalisation
    rows: torch.Tensor  # (B, 4) int64: subject index in the dataset, I_s row, I_gt row, I_f row

    def __len__(self) -> int:
        return int(self.source.shape[0])

    @staticmethod
    def cat(items: Sequence[Triplets]) -> Triplets:
        return Triplets(**{f.name: torch.cat([getattr(t, f.name) for t in items]) for f in fields(Triplets)})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Triplets:
        return Triplets(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})

    def pin_memory(self) -> Triplets:  # called by DataLoader(pin_memory=True)
        return Triplets(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    def select(self, index: slice | torch.Tensor) -> Triplets:
        return Triplets(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


@dataclass(frozen=True)
class TripletSizes:
    """Sides of the tensors of a batch, from the model they feed."""

    input: int  # I_s, I_f
    output: int  # I_gt and its masks
    depth: int  # the depth prior: the neural rendering

    @classmethod
    def for_model(cls, cfg: ModelConfig) -> TripletSizes:
        return cls(cfg.image_resolution, cfg.output_resolution, cfg.render.neural_resolution)


class TripletDataset(Dataset):
    """Triplets over subjects; item ``(epoch, i)``: target row i (flat over subjects) with its source drawn for epoch."""

    def __init__(self, subjects: Sequence[SubjectRows], sizes: TripletSizes, depth: DepthSource, seed: int = 0,
                 same_frame: bool = False, same_camera: float = 0.0, world_turn_deg: float = 0.0, world_turn_share: float = 1.0):
        self.subjects = list(subjects)
        self.sizes, self.depth, self.seed, self.same_frame, self.same_camera = sizes, depth, seed, same_frame, same_camera
        self.world_turn_deg = world_turn_deg  # items' worlds turned by up to this many degrees (train/world_turn.py) ...
        self.world_turn_share = world_turn_share  # ... this share of them, drawn per item
        counts = [len(s.targets) for s in self.subjects]
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        for s in self.subjects:
            lonely = self._targets_without_frame(s) if same_frame else self.targets_without_source(s)
            if lonely.size:
                row = int(lonely[0])
                need = ("no source image of their own frame" if same_frame else
                        "no source image with another frame and another camera: a triplet needs >= 2 frames and >= 2 cameras")
                raise DataError(f"{s.path}: {lonely.size} target row(s), e.g. row {row} (frame {s.labels.frame_index[row]}, "
                                f"camera {s.labels.cam_index[row]}), have {need}")
        self._readers: dict[Path, SubjectReader] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @staticmethod
    def targets_without_source(s: SubjectRows) -> np.ndarray:
        """Target rows for which every source shares the frame or the camera (counted, not searched)."""
        lab = s.labels
        f_src, c_src = lab.frame_index[s.sources], lab.cam_index[s.sources]
        f_tgt, c_tgt = lab.frame_index[s.targets], lab.cam_index[s.targets]
        count = lambda values, keys: np.array([np.count_nonzero(values == k) for k in keys])  # noqa: E731
        frames, cams = np.unique(f_tgt, return_inverse=True), np.unique(c_tgt, return_inverse=True)
        same_frame = count(f_src, frames[0])[frames[1]]
        same_cam = count(c_src, cams[0])[cams[1]]
        base = max(c_src.max(initial=0), c_tgt.max(initial=0)) + 1
        pairs = np.sort(f_src.astype(np.int64) * base + c_src)  # (frame, camera) of each source as one key
        keys = f_tgt.astype(np.int64) * base + c_tgt
        both = np.searchsorted(pairs, keys, side="right") - np.searchsorted(pairs, keys, side="left")
        return s.targets[len(s.sources) - same_frame - same_cam + both == 0]

    @staticmethod
    def _targets_without_frame(s: SubjectRows) -> np.ndarray:
        """Target rows whose frame has no source row."""
        return s.targets[~np.isin(s.labels.frame_index[s.targets], s.labels.frame_index[s.sources])]

    def _source_candidates(self, s: SubjectRows, target: int, in_place: bool) -> np.ndarray:
        """Rows I_s may be for ``target``; ``in_place``: through its own camera, when the subject has such a row."""
        lab = s.labels
        same_frame = lab.frame_index[s.sources] == lab.frame_index[target]
        if self.same_frame:
            return s.sources[same_frame]
        same_camera = lab.cam_index[s.sources] == lab.cam_index[target]
        through_own_camera = ~same_frame & same_camera
        if in_place and through_own_camera.any():
            return s.sources[through_own_camera]
        return s.sources[~same_frame & ~same_camera]

    def locate(self, index: int) -> tuple[int, int]:
        """Flat index -> (subject index, target row)."""
        k = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return k, int(self.subjects[k].targets[index - self._offsets[k]])

    def draw(self, epoch: int, index: int) -> tuple[int, int, int, int]:
        """(subject index, I_s row, I_gt row, I_f row) of item ``index`` in ``epoch``: a function of (seed, epoch, index)."""
        k, target = self.locate(index)
        s = self.subjects[k]
        in_place = self.same_camera > 0 and np.random.default_rng([self.seed, epoch, index, 1]).random() < self.same_camera
        candidates = self._source_candidates(s, target, in_place)
        source = int(candidates[np.random.default_rng([self.seed, epoch, index]).integers(len(candidates))])
        return k, source, target, s.frontal_row(int(s.labels.frame_index[target]))

    def _reader(self, s: SubjectRows) -> SubjectReader | Sequence[Sample]:
        if s.samples is not None:
            return s.samples
        if self._pid != os.getpid():  # a forked DataLoader worker: open files of its own
            self._readers, self._pid = {}, os.getpid()
        if s.path not in self._readers:
            self._readers[s.path] = open_subject(s.path)
        return self._readers[s.path]

    def close(self) -> None:
        """Close the files this process opened."""
        for reader in self._readers.values():
            reader.close()
        self._readers = {}

    def load(self, k: int, source: int, target: int, frontal: int | None = None) -> Triplets:
        """The triplet (I_s, I_gt, I_f) of subject ``k`` with explicit rows (I_f: the frontal row of I_gt's frame)."""
        s, sz = self.subjects[k], self.sizes
        lab = s.labels
        frontal = s.frontal_row(int(lab.frame_index[target])) if frontal is None else frontal
        reader = self._reader(s)
        src, tgt, fro = reader[source], reader[target], reader[frontal]
        prior, valid = depth_to_world(self.depth.read(s, target, tgt), s.normalisation, sz.depth)
        source_prior, source_valid = depth_to_world(self.depth.read(s, source, src), s.normalisation, sz.depth)
        f32 = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))[None]  # noqa: E731
        return Triplets(
            source=image_tensor(src.image, sz.input)[None],
            target=image_tensor(tgt.image, sz.output)[None],
            frontal=image_tensor(fro.image, sz.input)[None],
            face_mask=mask_tensor(tgt.face_mask, sz.output)[None],
            eye_mask=mask_tensor(tgt.eye_mask, sz.output)[None] if tgt.eye_mask is not None else torch.zeros(1, 1, sz.output, sz.output),
            depth_prior=torch.from_numpy(prior)[None, None],
            depth_valid=torch.from_numpy(valid)[None, None],
            source_depth=torch.from_numpy(source_prior)[None, None],
            source_depth_valid=torch.from_numpy(source_valid)[None, None],
            gaze_head=f32(lab.gaze_head[target]), gaze=f32(lab.gaze[target]), camera=f32(lab.camera[target]),
            source_gaze_head=f32(lab.gaze_head[source]), source_camera=f32(lab.camera[source]),
            frontal_camera=f32(lab.camera[frontal]),
            mm_per_unit=torch.tensor([s.mm_per_unit], dtype=torch.float32),
            rows=torch.tensor([[k, source, target, frontal]], dtype=torch.int64),
        )

    def __getitem__(self, item: tuple[int, int]) -> Triplets:
        epoch, index = item
        k, source, target, frontal = self.draw(epoch, index)
        triplet = self.load(k, source, target, frontal)
        if self.world_turn_deg > 0:  # drawn per item like the source: a resumed run turns the same worlds
            rng = np.random.default_rng([self.seed, epoch, index, 2])
            if self.world_turn_share >= 1 or rng.random() < self.world_turn_share:  # share 1: no draw
                triplet = turn_world(triplet, random_turn(rng, self.world_turn_deg))
        return triplet


# --------------------------------------------------------------------------- sampling and loading


class TripletBatchSampler(Sampler[list[tuple[int, int]]]):
    """Endless batches of ``(epoch, index)``; batch ``step`` is the same whatever the start, rank count or workers.

    Epoch e visits a permutation of the items drawn from (seed, e), ``batch_size`` at a time, the
    incomplete last batch dropped. Under data parallelism each of ``world_size`` ranks takes every
    world_size-th item of the global batch, so the global batch does not depend on the rank count.
    """

    def __init__(self, items: int, batch_size: int, seed: int = 0, start_step: int = 0, rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by the {world_size} workers")
        self.steps_per_epoch = items // batch_size
        if self.steps_per_epoch == 0:
            raise DataError(f"{items} training images cannot fill one batch of {batch_size}")
        self.items, self.batch_size, self.seed = items, batch_size, seed
        self.start_step, self.rank, self.world_size = start_step, rank, world_size

    def batch(self, step: int) -> list[tuple[int, int]]:
        epoch, b = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.items)
        chosen = order[b * self.batch_size : (b + 1) * self.batch_size][self.rank :: self.world_size]
        return [(epoch, int(i)) for i in chosen]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1


def make_loader(dataset: Dataset, batch_sampler: Sampler | Sequence, workers: int = 0, prefetch: int = 2,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader of ``Triplets``; its own generator, so iterating it never draws from torch's global RNG."""
    return DataLoader(
        dataset, batch_sampler=batch_sampler, num_workers=workers, collate_fn=Triplets.cat, pin_memory=pin_memory,
        prefetch_factor=prefetch if workers else None, persistent_workers=False, generator=torch.Generator(),
    )


def fixed_batches(dataset: TripletDataset, samples: int, batch_size: int, seed: int = 0) -> list[list[tuple[int, int]]]:
    """A fixed draw of ``samples`` items (epoch 0) cut in batches: the same validation set at every validation."""
    chosen = np.sort(np.random.default_rng([seed, 1]).permutation(len(dataset))[: min(samples, len(dataset))])
    items = [(0, int(i)) for i in chosen]
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
