"""Training triplets, the subject split, the batch sampler and the depth priors (train/data.py, train/depth_prior.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from gazegen import geometry
from gazegen.checkpoint import save_pretrained
from gazegen.config import (CONFIG_DIR, DepthPriorConfig, ModelConfig, NormalisationConfig, RigConfig, SynthHeadsConfig,
                            TrainDataConfig, load_config)
from gazegen.data.heads import synthesize_store
from gazegen.data.images import mask_tensor
from gazegen.data.sample import Sample
from gazegen.data.splits import store_splits
from gazegen.data.store import SubjectWriter, write_split
from gazegen.data.xgaze import DataError, open_subject
from gazegen.models.livegaze import LiveGaze
from gazegen.train import depth_prior
from gazegen.train.data import TripletBatchSampler, TripletDataset, Triplets, TripletSizes, make_loader
from gazegen.train.depth_prior import (DatasetDepth, DepthPriorError, FileDepth, depth_source, depth_to_world,
                               prepare_teacher_prior)
from gazegen.train.subjects import read_subject, split_subjects, subject_from_samples

SIZES = TripletSizes(input=64, output=32, depth=16)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """3 procedural subjects (2 train, 1 test) x 3 gazes x 4 cameras at 64 px."""
    cfg = SynthHeadsConfig(subjects=3, resolution=64, gazes=3, test_subjects=1, rig=RigConfig(views=4))
    return synthesize_store(tmp_path_factory.mktemp("data") / "heads", cfg, workers=1)


@pytest.fixture(scope="module")
def dataset(store):
    subjects = [read_subject(p) for p in store_splits(store).split("train")]
    return TripletDataset(subjects, SIZES, DatasetDepth(), seed=3)


def test_subject_split_is_by_whole_subjects_and_disjoint(store):
    split = split_subjects(store, TrainDataConfig(val_subjects=1, split_seed=0))
    names = [[p.name for p in part] for part in (split.train, split.val, split.test)]
    assert [len(n) for n in names] == [1, 1, 1]
    assert set(names[0]).isdisjoint(names[1]) and set(names[0] + names[1]).isdisjoint(names[2])
    assert sorted(names[0] + names[1] + names[2]) == ["subject0000.h5", "subject0001.h5", "subject0002.h5"]
    assert split_subjects(store, TrainDataConfig(val_subjects=1, split_seed=0)) == split  # seeded
    with pytest.raises(DataError, match="cannot spare 2"):
        split_subjects(store, TrainDataConfig(val_subjects=2))


def test_triplets_follow_the_paper(dataset):
    assert len(dataset) == 2 * 12  # every image of the training subjects is a target once per epoch
    for epoch in range(2):
        for index in range(len(dataset)):
            k, source, target, frontal = dataset.draw(epoch, index)
            s = dataset.subjects[k]
            lab = s.labels
            assert (k, target) == dataset.locate(index)
            assert lab.frame_index[source] != lab.frame_index[target]  # another gaze ...
            assert lab.cam_index[source] != lab.cam_index[target]  # ... and another camera, same subject file
            assert not np.allclose(lab.gaze_head[source], lab.gaze_head[target])
            assert lab.frame_index[frontal] == lab.frame_index[target]  # I_f: I_gt's frame (its gaze) ...
            same_frame = np.flatnonzero(lab.frame_index == lab.frame_index[target])
            poses = np.linalg.norm(lab.head_pose[same_frame], axis=1)
            assert np.linalg.norm(lab.head_pose[frontal]) == poses.min()  # ... from the most frontal camera
            assert lab.cam_index[frontal] == 0 and np.allclose(lab.head_pose[frontal], 0)  # the rig's frontal camera
            np.testing.assert_array_equal(lab.gaze_head[frontal], lab.gaze_head[target])


def test_a_triplet_carries_the_rows_it_names(dataset):
    t = dataset[(1, 5)]
    k, source, target, frontal = t.rows[0].tolist()
    assert (k, source, target, frontal) == dataset.draw(1, 5)
    with open_subject(dataset.subjects[k].path) as reader:
        src, tgt, fro = reader[source], reader[target], reader[frontal]
    lab = dataset.subjects[k].labels
    assert t.source.shape == (1, 3, 64, 64) and t.target.shape == (1, 3, 32, 32) and t.depth_prior.shape == (1, 1, 16, 16)
    torch.testing.assert_close(t.source[0], torch.from_numpy(src.image).permute(2, 0, 1).float() / 127.5 - 1)  # 64 px: unresized
    torch.testing.assert_close(t.frontal[0], torch.from_numpy(fro.image).permute(2, 0, 1).float() / 127.5 - 1)
    # the target is area-averaged to the output side: a 2x2 mean at 64 -> 32 px
    mean = torch.from_numpy(tgt.image).float().permute(2, 0, 1).reshape(3, 32, 2, 32, 2).mean((2, 4)) / 127.5 - 1
    torch.testing.assert_close(t.target[0], mean, atol=1 / 127.5, rtol=0)
    assert set(t.eye_mask.unique().tolist()) <= {0.0, 1.0} and t.eye_mask.sum() > 0 and t.face_mask.sum() > t.eye_mask.sum()
    for name, row, key in (("gaze_head", target, "gaze_head"), ("gaze", target, "gaze"), ("camera", target, "camera"),
                           ("source_gaze_head", source, "gaze_head"), ("source_camera", source, "camera"),
                           ("frontal_camera", frontal, "camera")):
        np.testing.assert_array_equal(getattr(t, name)[0].numpy(), getattr(lab, key)[row])
    # each depth is its own row's: the source's is the target depth of the triplet whose target is the source
    mm = dataset.subjects[k].mm_per_unit
    for depth, valid, sample in ((t.depth_prior, t.depth_valid, tgt), (t.source_depth, t.source_depth_valid, src)):
        world, ok = depth_to_world(sample.depth, dataset.subjects[k].normalisation, 16)
        torch.testing.assert_close(depth[0, 0], torch.from_numpy(world))
        np.testing.assert_array_equal(valid[0, 0].numpy(), ok)
        assert ok.any() and 800 < float(depth[valid].mean()) * mm < 1100  # mm: the head sits 950 mm from the camera
    other = dataset.load(k, source, source)
    assert torch.equal(other.depth_prior, t.source_depth) and not torch.equal(t.source_depth, t.depth_prior)


def test_draws_depend_on_seed_epoch_and_index_only(store, dataset):
    again = TripletDataset(dataset.subjects, SIZES, DatasetDepth(), seed=3)
    assert [dataset.draw(2, i) for i in range(24)] == [again.draw(2, i) for i in range(24)]
    assert [dataset.draw(0, i) for i in range(24)] != [dataset.draw(1, i) for i in range(24)]  # new sources each epoch
    other = TripletDataset(dataset.subjects, SIZES, DatasetDepth(), seed=4)
    assert [dataset.draw(0, i) for i in range(24)] != [other.draw(0, i) for i in range(24)]


def test_a_subject_without_valid_sources_is_refused(store):
    one_frame = read_subject(store_splits(store).split("train")[0])
    rows = np.flatnonzero(one_frame.labels.frame_index == 0)
    lonely = dataclasses.replace(one_frame, targets=rows, sources=rows)
    with pytest.raises(DataError, match="another frame and another camera"):
        TripletDataset([lonely], SIZES, DatasetDepth())


def test_batch_sampler_position_ranks_and_epochs():
    sampler = TripletBatchSampler(items=10, batch_size=4, seed=1)
    assert sampler.steps_per_epoch == 2
    first = [b for _, b in zip(range(6), iter(sampler))]
    later = TripletBatchSampler(items=10, batch_size=4, seed=1, start_step=3)
    assert [b for _, b in zip(range(3), iter(later))] == first[3:]  # a run resumed at step 3 sees the same batches
    assert [e for e, _ in first[0] + first[1]] == [0] * 8 and [e for e, _ in first[2]] == [1] * 4
    assert len({i for _, i in first[0] + first[1]}) == 8  # one epoch: no item twice
    ranks = [TripletBatchSampler(10, 4, seed=1, rank=r, world_size=2).batch(4) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == sorted(first[4]) and len(ranks[0]) == 2  # ranks split the global batch
    with pytest.raises(ValueError, match="not divisible"):
        TripletBatchSampler(10, 4, world_size=3)


def test_loader_workers_give_the_batches_of_the_inline_loader(dataset):
    def batches(workers):
        loader = make_loader(dataset, TripletBatchSampler(len(dataset), 4, seed=0), workers=workers)
        return [b for _, b in zip(range(3), loader)]

    inline, parallel = batches(0), batches(2)
    for a, b in zip(inline, parallel):
        assert isinstance(b, Triplets) and len(b) == 4
        for f in dataclasses.fields(Triplets):
            assert torch.equal(getattr(a, f.name), getattr(b, f.name)), f.name


def test_masks_are_area_averaged_then_cut():
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 0]], np.uint8)
    assert mask_tensor(mask, 2)[0].tolist() == [[1.0, 0.0], [0.0, 1.0]]  # 3/4 -> 1, 1/4 -> 0, 3/4 -> 1


def test_depth_to_world_units_and_validity():
    norm = NormalisationConfig(focal=1600.0, distance_mm=950.0, resolution=512, radius=2.7)
    mm_per_unit = 950.0 / 2.7
    assert geometry.mm_per_world_unit(norm) == pytest.approx(mm_per_unit)
    depth = np.zeros((4, 4), np.float32)
    depth[:2, :2] = [[950.0, 950.0], [0.0, 1045.0]]  # 3 of 4 valid: mean of the valid ones
    depth[2:, 2:] = [[950.0, 0.0], [0.0, 0.0]]  # 1 of 4 valid: invalid
    depth[:2, 2:] = np.nan  # not finite: invalid
    world, valid = depth_to_world(depth, norm, 4)
    assert valid.sum() == 4 and world[0, 0] == pytest.approx(2.7) and world[1, 1] == pytest.approx(1045.0 / mm_per_unit)
    assert (world[~valid] == 0).all()
    world, valid = depth_to_world(depth, norm, 2)
    assert valid.tolist() == [[True, False], [False, False]]
    assert world[0, 0] == pytest.approx((950 + 950 + 1045) / 3 / mm_per_unit)
    assert world[0, 1] == 0 and world[1, 1] == 0
    world, valid = depth_to_world(None, norm, 3)
    assert not valid.any() and world.shape == (3, 3)


def _write_known_depth(store_dir, norm: NormalisationConfig) -> None:
    """One subject, 2 frames x 2 cameras, depth 950 mm on the left half of every image and 0 elsewhere."""
    size = norm.resolution
    depth = np.zeros((size, size), np.float32)
    depth[:, : size // 2] = 950.0
    mask = np.zeros((size, size), np.uint8)
    mask[8:24, 8:24] = 1
    samples = []
    for frame in range(2):
        for cam, pose in enumerate(((0.0, 0.0), (0.0, 0.4))):
            pose = np.array(pose, np.float32)
            samples.append(Sample(
                image=np.full((size, size, 3), 40 * frame + 10 * cam, np.uint8), gaze=np.zeros(2, np.float32),
                head_pose=pose, gaze_head=np.array([0.1 * frame, 0.0], np.float32),
                camera=geometry.head_pose_to_camera(pose.astype(np.float64), norm).astype(np.float32), normalisation=norm,
                subject="subject0000", frame_index=frame, cam_index=cam, face_mask=mask, left_eye_mask=mask,
                right_eye_mask=mask, depth=depth))
    with SubjectWriter(store_dir / "train" / "subject0000.h5", norm, "subject0000") as writer:
        writer.write(samples)
    write_split(store_dir, ["subject0000.h5"], [])


def test_dataset_prior_converts_a_known_depth(tmp_path):
    norm = NormalisationConfig(focal=100.0, distance_mm=950.0, resolution=32, radius=2.5)  # 380 mm per world unit
    _write_known_depth(tmp_path, norm)
    subject = read_subject(tmp_path / "train" / "subject0000.h5")
    t = TripletDataset([subject], TripletSizes(32, 32, 8), DatasetDepth())[(0, 0)]
    expected = torch.zeros(8, 8)
    expected[:, :4] = 950.0 / 380.0
    torch.testing.assert_close(t.depth_prior[0, 0], expected)
    assert t.depth_valid[0, 0, :, :4].all() and not t.depth_valid[0, 0, :, 4:].any()
    assert t.mm_per_unit.item() == pytest.approx(380.0)
    # files: the same layout from .npy (twice the depth), and a wrong shape is named
    (tmp_path / "prior").mkdir()
    with open_subject(subject.path) as reader:
        np.save(tmp_path / "prior" / "subject0000.npy", np.stack([reader[i].depth for i in range(len(reader))]) * 2)
    source = depth_source(DepthPriorConfig(kind="files", files=str(tmp_path / "prior")))
    assert isinstance(source, FileDepth)
    t2 = TripletDataset([subject], TripletSizes(32, 32, 8), source)[(0, 0)]
    torch.testing.assert_close(t2.depth_prior, 2 * t.depth_prior)
    np.save(tmp_path / "prior" / "subject0000.npy", np.zeros((3, 8, 8), np.float32))
    with pytest.raises(DepthPriorError, match=r"shape \(3, 8, 8\), expected \(4, H, H\)"):
        TripletDataset([subject], TripletSizes(32, 32, 8), FileDepth(tmp_path / "prior"))[(0, 0)]


def test_teacher_prior_is_the_teachers_depth_of_the_frontal_image_at_the_target_camera(store, tmp_path, monkeypatch):
    torch.manual_seed(0)
    teacher = LiveGaze(load_config(ModelConfig, CONFIG_DIR / "model" / "tiny.toml")).eval()
    save_pretrained(tmp_path / "teacher", teacher)
    subject = read_subject(store_splits(store).split("test")[0])
    cfg = DepthPriorConfig(kind="teacher", teacher=str(tmp_path / "teacher"), teacher_batch=3)
    cache = prepare_teacher_prior(cfg, [subject], tmp_path / "run")
    cached = np.load(cache / f"{subject.subject}.npy")
    assert cached.shape == (12, 16, 16)
    target = 6  # frame 1, camera 2
    frontal = subject.frontal_row(int(subject.labels.frame_index[target]))
    with open_subject(subject.path) as reader:
        image = torch.from_numpy(reader[frontal].image).permute(2, 0, 1).float()[None] / 127.5 - 1
    with torch.no_grad():
        gaze = torch.from_numpy(subject.labels.gaze_head[target])[None]
        depth = teacher(image, gaze, torch.from_numpy(subject.labels.camera[target])[None]).depth[0, 0]
    np.testing.assert_allclose(cached[target], depth.numpy() * subject.mm_per_unit, rtol=1e-5)
    # the data pipeline reads the cache back in world units
    t = TripletDataset([subject], TripletSizes(64, 64, 16), depth_source(cfg, tmp_path / "run")).load(0, 0, target)
    torch.testing.assert_close(t.depth_prior[0, 0], depth, rtol=1e-5, atol=1e-6)
    # cached: a second call does not run the teacher again
    monkeypatch.setattr(depth_prior, "load_teacher", lambda *a: pytest.fail("the cache was not reused"))
    assert prepare_teacher_prior(cfg, [subject], tmp_path / "run") == cache


def test_a_missing_teacher_is_named_before_its_cache_folder_is_made(store, tmp_path):
    subject = read_subject(store_splits(store).split("test")[0])
    cfg = DepthPriorConfig(kind="teacher", teacher=str(tmp_path / "no-teacher"))
    with pytest.raises(DepthPriorError, match="no-teacher: teacher not found"):
        prepare_teacher_prior(cfg, [subject], tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_subject_in_memory_gives_the_triplets_of_its_file(dataset):
    s = dataset.subjects[0]
    with open_subject(s.path) as reader:
        samples = [reader[i] for i in range(len(reader))]
    memory = TripletDataset([subject_from_samples(samples)], SIZES, DatasetDepth(), seed=3)
    a, b = dataset[(0, 7)], memory[(0, 7)]
    for f in dataclasses.fields(Triplets):
        assert torch.equal(getattr(a, f.name), getattr(b, f.name)), f.name


def test_reconstruction_pairs_share_the_targets_frame_and_include_autoencoding(dataset):
    recon = TripletDataset(dataset.subjects, SIZES, DatasetDepth(), seed=3, same_frame=True)
    cameras_drawn = set()
    for epoch in range(6):
        for index in range(len(recon)):
            k, source, target, frontal = recon.draw(epoch, index)
            lab = recon.subjects[k].labels
            assert lab.frame_index[source] == lab.frame_index[target]  # the same gaze ...
            np.testing.assert_array_equal(lab.gaze_head[source], lab.gaze_head[target])
            cameras_drawn.add(bool(lab.cam_index[source] == lab.cam_index[target]))
    assert cameras_drawn == {True, False}  # ... from its own camera (autoencoding) and from others


def test_a_same_camera_share_takes_that_share_of_sources_in_place(dataset):
    """same_camera = p: a draw is in place (I_gt's camera, another frame) with probability p, else as the paper."""
    draws = []
    for p in (0.0, 0.3, 1.0):
        mixed = TripletDataset(dataset.subjects, SIZES, DatasetDepth(), seed=3, same_camera=p)
        in_place = []
        for epoch in range(40):
            for index in range(len(mixed)):
                k, source, target, _ = mixed.draw(epoch, index)
                lab = mixed.subjects[k].labels
                assert lab.frame_index[source] != lab.frame_index[target]  # always another gaze
                in_place.append(bool(lab.cam_index[source] == lab.cam_index[target]))
        draws.append(np.mean(in_place))
    n = 40 * len(dataset)
    assert draws[0] == 0.0 and draws[2] == 1.0
    assert abs(draws[1] - 0.3) < 4 * np.sqrt(0.3 * 0.7 / n)  # binomial: 4 standard deviations
    # with no share, the draws are those of a dataset built without the option
    plain = [dataset.draw(e, i) for e in range(3) for i in range(len(dataset))]
    none = TripletDataset(dataset.subjects, SIZES, DatasetDepth(), seed=3, same_camera=0.0)
    assert [none.draw(e, i) for e in range(3) for i in range(len(dataset))] == plain


def test_a_finetune_input_group_of_one_frame_is_named(store):
    """Fine-tuning draws triplets within the input group (the first rows, train/finetune.py): its frames and cameras
    decide, not the file's. The procedural files hold their rows frame by frame, 4 cameras each, so the first 4 rows are
    one frame, and of the first 5 only row 0 (frame 0, camera 0) lacks a source of another frame and another camera."""
    from gazegen.train.finetune import check_input_group, groups

    subject = read_subject(store_splits(store).split("test")[0])
    assert subject.labels.frame_index.ravel()[:5].tolist() == [0, 0, 0, 0, 1]  # the file order the oracle rests on
    assert subject.labels.cam_index.ravel()[:5].tolist() == [0, 1, 2, 3, 0]
    with pytest.raises(DataError) as err:
        check_input_group(subject, groups(12, 4)[0])
    assert str(err.value) == (f"{subject.path}: its input group (the first 4 of its 12 images, in file order) holds 1 frame(s) "
                              "(0) and 4 camera(s): 4 of its images have no source of another frame and another camera in "
                              "it, which fine-tuning's triplets need (the input group is at most half the subject's images)")
    with pytest.raises(DataError, match=r"holds 2 frame\(s\) \(0, 1\) and 4 camera\(s\): 1 of its images have no source"):
        check_input_group(subject, groups(12, 5)[0])
    check_input_group(subject, groups(12, 6)[0])  # frames 0 and 1, cameras 0-3 and 0-1: every image has a source
