"""gazegen/data/images.py and gazegen/data/splits.py against closed forms."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gazegen.data.images import (from_model_range, image_tensor, mask_tensor, resize_area, resize_image, resize_nearest,
                                 to_model_range, to_unit)
from gazegen.data.splits import store_splits
from gazegen.data.store import SPLIT_FILE
from gazegen.data.xgaze import DataError
from gazegen.imaging import resize_tensor

ALL = torch.arange(256, dtype=torch.uint8)


def test_model_range_closed_forms():
    x = to_model_range(ALL)
    assert x.dtype == torch.float32
    assert x[0].item() == -1.0 and x[255].item() == 1.0
    assert to_model_range(torch.tensor([127.5])).item() == 0.0  # the midpoint, exactly
    expected = np.arange(256, dtype=np.float32) / np.float32(127.5) - np.float32(1)  # float32 ops, as the readers did
    assert np.array_equal(x.numpy().view(np.int32), expected.view(np.int32))  # the same bits
    torch.testing.assert_close(x.double(), ALL.double() / 127.5 - 1, atol=1.2e-7, rtol=0)  # within float32 rounding
    assert bool((x[1:] > x[:-1]).all())


def test_uint8_round_trip_is_the_identity():
    assert torch.equal(from_model_range(to_model_range(ALL)), ALL)
    assert from_model_range(to_model_range(ALL)).dtype == torch.uint8


def test_from_model_range_clamps_and_rounds():
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 5.0, 1 / 127.5 - 1 - 0.4 / 127.5])
    assert from_model_range(x).tolist() == [0, 0, 128, 255, 255, 1]  # 0 -> 127.5 -> 128 (half to even)


def test_to_unit_closed_forms():
    assert to_unit(torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert to_unit(torch.zeros(1, dtype=torch.bfloat16)).dtype == torch.float32


def test_image_tensor_is_resize_then_model_range():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    same = image_tensor(image, 8)
    assert same.shape == (3, 8, 8) and same.is_contiguous()
    torch.testing.assert_close(same, torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1, atol=0, rtol=0)
    half = image_tensor(image, 4)  # INTER_AREA by 2: the mean of each 2x2 block, rounded to uint8
    blocks = image.astype(np.float64).reshape(4, 2, 4, 2, 3).mean((1, 3))
    torch.testing.assert_close(half, torch.from_numpy(blocks).permute(2, 0, 1).float() / 127.5 - 1, atol=1 / 127.5, rtol=0)


def test_resizers_closed_forms():
    image = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    assert resize_image(image, 4) is image and resize_area(image, 4) is image and resize_nearest(image, 4) is image
    blocks = image.astype(np.float64).reshape(2, 2, 2, 2).mean((1, 3))
    np.testing.assert_allclose(resize_image(image, 2), blocks, atol=0.5)  # shrink: area means
    np.testing.assert_allclose(resize_area(image, 2), blocks, atol=0.5)
    grown = resize_nearest(image, 8)
    assert np.array_equal(grown, np.repeat(np.repeat(image, 2, 0), 2, 1))  # every value an input value
    flat = np.full((2, 2, 3), 77, np.uint8)
    assert np.array_equal(resize_image(flat, 5), np.full((5, 5, 3), 77, np.uint8))  # cubic growth keeps a constant
    x = torch.rand(1, 3, 6, 6)
    assert resize_tensor(x, 6) is x
    torch.testing.assert_close(resize_tensor(torch.full((1, 2, 9, 9), 0.3), 4), torch.full((1, 2, 4, 4), 0.3))
    ramp = torch.tensor([0.0, 1, 4, 9, 16, 25, 36, 49]).expand(1, 1, 8, 8)  # varies along x only
    half = resize_tensor(ramp, 4)[0, 0, 0]  # antialiased by 2: a triangle filter, weights 1/8, 3/8, 3/8, 1/8 inside
    r = ramp[0, 0, 0]
    for j in (1, 2):
        assert half[j].item() == pytest.approx(((r[2 * j - 1] + 3 * r[2 * j] + 3 * r[2 * j + 1] + r[2 * j + 2]) / 8).item(), abs=1e-5)


def test_mask_tensor_cuts_area_at_half():
    mask = np.kron(np.array([[1, 0], [0, 1]], np.uint8), np.ones((2, 2), np.uint8))
    mask[0, 0] = 0  # 3/4 of the first block
    assert mask_tensor(mask, 2)[0].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert torch.equal(mask_tensor(None, 3), torch.ones(1, 3, 3))


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_splits_from_folders(tmp_path):
    top, a, b, t = (_touch(tmp_path / n) for n in ("z.h5", "train/a.h5", "train/b.h5", "test/t.h5"))
    splits = store_splits(tmp_path)
    assert splits.split_file is None
    assert splits.split("train") == [top, a, b]  # the store's own files first, then train/
    assert splits.split("test") == [t]
    assert splits.present == tuple(sorted([top, a, b, t])) and splits.unlisted == ()


def test_splits_from_the_split_file(tmp_path):
    a, b, t, flat = (_touch(tmp_path / n) for n in ("train/a.h5", "b.h5", "test/t.h5", "xgaze_s.h5"))
    extra = _touch(tmp_path / "train/extra.h5")
    (tmp_path / SPLIT_FILE).write_text(json.dumps({"train": ["b.h5", "a.h5"], "test": ["t.h5", "s.h5"]}))
    splits = store_splits(tmp_path)
    assert splits.split_file == tmp_path / SPLIT_FILE
    assert splits.split("train") == [b, a]  # listing order; <key>/name, then name, then xgaze_name
    assert splits.split("test") == [t, flat]
    assert splits.split("val") == []
    assert splits.unlisted == (extra,)


def test_splits_report_what_is_wrong(tmp_path):
    (tmp_path / SPLIT_FILE).write_text(json.dumps({"train": ["gone.h5"], "test": []}))
    splits = store_splits(tmp_path)
    assert splits.split("test") == []
    with pytest.raises(DataError, match=r"lists 'gone\.h5' under 'train' but no such file exists"):
        splits.split("train")
    (tmp_path / SPLIT_FILE).write_text("[1, 2]")
    with pytest.raises(DataError, match="not a JSON object of lists of file names"):
        store_splits(tmp_path)
    (tmp_path / SPLIT_FILE).write_text('{"train": [')  # truncated
    with pytest.raises(DataError, match=r"train_test_split\.json: not valid JSON \(Expecting value: line 1 column 12"):
        store_splits(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="not a training store"):
        store_splits(empty).split("train")
    with pytest.raises(DataError, match=f"^{tmp_path / 'nowhere'}: no such file or folder$"):
        store_splits(tmp_path / "nowhere").split("train")
