"""Metrics against independent oracles: scikit-image (SSIM, PSNR), closed forms (Fréchet distance),
hand computations (masked metrics, LPIPS layout); LPIPS/FID plumbing with random networks saved
under the published file names and found through $GAZEGEN_WEIGHTS."""

import dataclasses
import hashlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from gazegen import geometry
from gazegen.metrics import scores as M
from gazegen import weights as W
from gazegen.metrics.inception import FIDInceptionV3
from gazegen.metrics.lpips import LPIPS, LPIPS_LAYERS


def pair(seed=0, shape=(2, 3, 32, 40), noise=0.3):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(*shape, generator=g) * 2 - 1
    b = (a + noise * torch.randn(*shape, generator=g)).clamp(-1, 1)
    return a, b


def sk_ssim_of(x, y, data_range):
    return sk_ssim(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range, channel_axis=0)


# --------------------------------------------------------------------------- SSIM, PSNR


def test_ssim_matches_skimage_on_unit_images():
    a, b = pair()
    ours = M.ssim(a, b)  # [-1, 1] images, mapped to [0, 1]
    for i in range(2):
        ref = sk_ssim_of(((a[i] + 1) / 2).double().numpy(), ((b[i] + 1) / 2).double().numpy(), 1.0)
        assert ours[i].item() == pytest.approx(ref, abs=1e-4)
    assert torch.allclose(M.ssim(a, a), torch.ones(2, dtype=torch.float64), atol=1e-10)


def test_ssim_and_psnr_match_skimage_on_uint8():
    a, b = pair(1, shape=(1, 3, 24, 24), noise=0.1)
    a8, b8 = ((a + 1) * 127.5).round().to(torch.uint8), ((b + 1) * 127.5).round().to(torch.uint8)
    ours = M.ssim(a8, b8, value_range=(0, 255)).item()
    assert ours == pytest.approx(sk_ssim_of(a8[0].numpy(), b8[0].numpy(), 255), abs=1e-4)
    ref = sk_psnr(a8[0].numpy(), b8[0].numpy(), data_range=255)
    assert M.psnr(a8, b8, value_range=(0, 255)).item() == pytest.approx(ref, abs=1e-6)


def test_psnr_matches_skimage_and_is_range_independent():
    a, b = pair(2)
    ours = M.psnr(a, b)
    for i in range(2):
        ref = sk_psnr(((a[i] + 1) / 2).double().numpy(), ((b[i] + 1) / 2).double().numpy(), data_range=1.0)
        assert ours[i].item() == pytest.approx(ref, abs=1e-6)
        ref2 = sk_psnr(a[i].double().numpy(), b[i].double().numpy(), data_range=2.0)  # same images in [-1, 1]
        assert ours[i].item() == pytest.approx(ref2, abs=1e-6)
    assert torch.isinf(M.psnr(a, a)).all()


def test_ssim_rejects_tiny_images():
    with pytest.raises(ValueError, match="window"):
        M.ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


# --------------------------------------------------------------------------- masked metrics


def test_masked_l1_and_psnr_by_hand():
    a = torch.zeros(2, 3, 2, 2)  # [-1, 1] images; 0 maps to 0.5
    b = torch.zeros(2, 3, 2, 2)
    b[0, :, 0, 0] = 1.0  # +0.5 in [0, 1] units, inside the mask
    b[0, :, 1, 1] = -1.0  # outside the mask: must not count
    mask = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [0, 0]]], dtype=torch.uint8)  # (B, H, W); image 1 empty
    l1 = M.masked_l1(a, b, mask)
    assert l1[0].item() == pytest.approx(0.5 / 2)  # one of two masked pixels differs by 0.5, all channels alike
    assert math.isnan(l1[1].item())  # empty mask -> NaN, never 0
    p = M.masked_psnr(a, b, mask * 255)  # 0/255 masks work too
    assert p[0].item() == pytest.approx(10 * math.log10(1 / (0.25 / 2)))
    assert math.isnan(p[1].item())
    full = torch.ones(2, 1, 2, 2)
    assert torch.allclose(M.masked_psnr(a, b, full), M.psnr(a, b))
    assert torch.allclose(M.masked_l1(a, b, full), M.l1(a, b))
    summary = M.summarise(l1)
    assert summary.value == pytest.approx(0.25) and "1 of 2" in summary.note
    assert M.summarise(torch.tensor([math.nan])).value is None


def test_masked_psnr_against_numpy_indexing():
    a, b = pair(3, shape=(1, 3, 16, 16))
    mask = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(4)) > 0.6
    x, y = ((a[0] + 1) / 2).double().numpy(), ((b[0] + 1) / 2).double().numpy()
    sel = mask[0, 0].numpy()
    mse = ((x[:, sel] - y[:, sel]) ** 2).mean()
    assert M.masked_psnr(a, b, mask).item() == pytest.approx(10 * np.log10(1 / mse), abs=1e-6)


def test_angular_error_is_geometry_s():
    assert M.angular_error is geometry.angular_error


# --------------------------------------------------------------------------- Fréchet distance


def closed_form(mu1, d1, mu2, d2):
    """FID of N(mu1, Q diag(d1) Q^T) and N(mu2, Q diag(d2) Q^T): the covariances commute."""
    return float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(d1) - np.sqrt(d2)) ** 2).sum())


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    d1, d2 = rng.uniform(0.5, 3, size=5), rng.uniform(0.1, 2, size=5)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))  # a shared eigenbasis: commuting, non-diagonal
    for basis in (np.eye(5), q):
        a = M.GaussianStats(mu1, basis @ np.diag(d1) @ basis.T, 0)
        b = M.GaussianStats(mu2, basis @ np.diag(d2) @ basis.T, 0)
        expected = closed_form(mu1, d1, mu2, d2)
        assert M.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
        assert M.frechet_distance(b, a) == pytest.approx(expected, rel=1e-9)
        assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_from_samples_converges():
    rng = np.random.default_rng(1)
    mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.5, 0.0])
    d1, d2 = np.array([1.0, 2.0, 0.5]), np.array([0.5, 1.0, 1.5])
    expected = closed_form(mu1, d1, mu2, d2)
    errors = []
    for n in (100, 100_000):
        x = rng.normal(size=(n, 3)) * np.sqrt(d1) + mu1
        y = rng.normal(size=(n, 3)) * np.sqrt(d2) + mu2
        errors.append(abs(M.frechet_distance(M.gaussian_stats(x), M.gaussian_stats(y)) - expected))
    assert errors[1] < 0.02 * expected and errors[1] < errors[0]


def test_frechet_distance_with_singular_covariances():
    x = np.random.default_rng(2).normal(size=(5, 16))  # fewer samples than dimensions
    s = M.gaussian_stats(x)
    assert np.linalg.matrix_rank(s.sigma) < 16
    assert M.frechet_distance(s, s) == pytest.approx(0.0, abs=1e-3)
    assert M.frechet_distance(s, M.gaussian_stats(x + 1.0)) == pytest.approx(16.0, abs=1e-3)  # mean shift only
    with pytest.raises(ValueError):
        M.gaussian_stats(x[:1])


# --------------------------------------------------------------------------- LPIPS and FID plumbing


def install(env, monkeypatch, name, state):
    """Save `state` under the published file name of `name`; point the registry at its hash."""
    path = env / W.WEIGHTS[name].filename
    torch.save(state, path)
    data = path.read_bytes()
    spec = dataclasses.replace(W.WEIGHTS[name], sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    monkeypatch.setitem(W.WEIGHTS, name, spec)


@pytest.fixture
def env(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv(W.ENV_VAR, str(folder))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    return folder


def random_lpips(seed=0):
    torch.manual_seed(seed)
    model = LPIPS()
    for i in range(len(LPIPS_LAYERS)):  # published lin weights are non-negative
        w = getattr(model, f"lin{i}").model[1].weight
        w.data = w.data.abs()
    return model


def test_lpips_unavailable_names_the_missing_file(env):
    metric = M.LPIPSMetric.load()
    assert metric.update(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16)) is None
    result = metric.compute()
    assert result.value is None and not result.available
    assert "vgg16-397923af.pth" in result.note and str(env) in result.note
    assert str(result).startswith("n/a (")
    with pytest.raises(ValueError):
        M.LPIPSMetric(None)  # no silent random-weight metric


def test_lpips_loads_published_layout_and_behaves(env, monkeypatch):
    source = random_lpips()
    state = source.state_dict()
    vgg = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    install(env, monkeypatch, "vgg16", {**vgg, "classifier.6.bias": torch.zeros(1000)})
    lin = {k: v for k, v in state.items() if k.startswith("lin")}
    assert sorted(lin) == [f"lin{i}.model.1.weight" for i in range(5)]
    metric = M.LPIPSMetric.load()
    with pytest.raises(W.MissingWeightsError, match="vgg.pth"):
        from gazegen.metrics.lpips import load_lpips

        load_lpips()
    assert metric.model is None and "vgg.pth" in metric.compute().note
    install(env, monkeypatch, "lpips_vgg", lin)
    metric = M.LPIPSMetric.load()
    a, b = pair(5, shape=(2, 3, 32, 32))
    d = metric.update(a, b)
    with torch.no_grad():
        assert torch.allclose(d.float(), source(a, b), atol=1e-6)  # the file's weights were loaded
        assert torch.allclose(metric.model(a, a), torch.zeros(2), atol=1e-7)
        assert torch.allclose(metric.model(b, a), metric.model(a, b), atol=1e-6)
    assert (d > 0).all() and metric.compute().value == pytest.approx(d.mean().item())


def test_lpips_layout_against_hand_formula():
    model = random_lpips(1)
    for i in range(5):  # unit linear weights: LPIPS = sum_l mean_hw sum_c (u_x - u_y)^2
        getattr(model, f"lin{i}").model[1].weight.data.fill_(1.0)
    a, b = pair(6, shape=(1, 3, 32, 32))
    with torch.no_grad():
        fa, fb = model.net(a), model.net(b)
        expected = sum(
            (F.normalize(fa[k], dim=1, eps=0) - F.normalize(fb[k], dim=1, eps=0)).pow(2).sum(1).mean() for k in LPIPS_LAYERS
        )
        assert model(a, b).item() == pytest.approx(expected.item(), rel=1e-4)


def test_fid_inception_loads_published_layout(env, monkeypatch):
    torch.manual_seed(0)
    source = FIDInceptionV3().eval()
    for m in source.modules():  # keep activations O(1) through the depth, so the check below means something
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}  # as old files
    missing = M.FIDMetric.load()
    assert missing.model is None and "pt_inception-2015-12-05-6726825d.pth" in missing.compute().note
    install(env, monkeypatch, "fid_inception", state)
    metric = M.FIDMetric.load()
    loaded = metric.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())  # every tensor came from the file
    assert metric.model.resize_input  # the published protocol: every input resized to 299 x 299
    metric.model.resize_input = False  # a smallest valid input keeps the test fast
    with torch.no_grad():
        features = metric.model(pair(7, shape=(1, 3, 75, 75))[0])
    assert features.shape == (1, 2048) and features.abs().mean() > 1e-3


class TinyFeatures(torch.nn.Module):
    """A stand-in for the Inception: per-channel means and spreads (6 features)."""

    def forward(self, x):
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], 1)


def test_fid_metric_plumbing_with_a_tiny_extractor():
    metric = M.FIDMetric(TinyFeatures(), value_range=(0, 1))
    g = torch.Generator().manual_seed(8)
    real = [torch.rand(4, 3, 8, 8, generator=g) for _ in range(3)]
    fake = [torch.rand(4, 3, 8, 8, generator=g) ** 2 for _ in range(2)]
    for r in real:
        metric.update(real=r)
    for f in fake:
        metric.update(fake=f)
    result = metric.compute()
    def stats(batches):  # value_range (0, 1) -> the networks' [-1, 1], then features
        return M.gaussian_stats(TinyFeatures()(torch.cat(batches) * 2 - 1).double())

    expected = M.frechet_distance(stats(real), stats(fake))
    assert result.value == pytest.approx(expected, rel=1e-9) and result.value > 0
    assert "12 real, 8 generated" in result.note
    same = M.FIDMetric(TinyFeatures())
    same.update(real=torch.cat(real), fake=torch.cat(real))
    assert same.compute().value == pytest.approx(0.0, abs=1e-9)
    assert M.FIDMetric(TinyFeatures()).compute().value is None  # no images yet
