"""Tests of egc_lite.metrics: PSNR, MS-SSIM, bpp, and learned-metric availability (no weights here)."""

from __future__ import annotations

import importlib.util
import itertools
import math
from pathlib import Path

import pytest
import torch

from egc_lite.errors import ModelNotFoundError, ParameterError
from egc_lite.metrics import (
    bpp,
    compute_metrics,
    lf_psnr,
    load_learned_metric,
    metric_availability,
    metric_notes,
    metric_weight_files,
    ms_ssim,
    ms_ssim_scales,
    psnr,
    sharpness,
)


def smooth_image(h: int = 96, w: int = 128, seed: int = 0) -> torch.Tensor:
    """A natural-ish (3, H, W) image in [0, 1]: gradients, a disc, mild texture."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    disc = (((yy - 0.5) ** 2 + (xx - 0.4) ** 2) < 0.08).float()
    r = 0.2 + 0.6 * xx + 0.2 * disc
    gch = 0.3 + 0.4 * yy * (1 - disc) + 0.1 * torch.sin(12 * xx)
    b = 0.5 + 0.3 * torch.cos(7 * yy + 3 * xx) - 0.2 * disc
    img = torch.stack([r, gch, b]) + 0.03 * torch.randn(3, h, w, generator=g)
    return img.clamp(0, 1)


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


def test_psnr_identical_is_inf_and_offset_known():
    x = smooth_image() * 0.8
    assert psnr(x, x) == math.inf
    assert psnr(x, x + 0.1) == pytest.approx(20.0, abs=1e-4)
    assert psnr(x, x + 0.01) == pytest.approx(40.0, abs=1e-4)
    assert psnr(x * 255, x * 255 + 25.5, data_range=255.0) == pytest.approx(20.0, abs=1e-4)


def test_psnr_batch_is_mean_of_images():
    x = smooth_image().unsqueeze(0).repeat(2, 1, 1, 1) * 0.8
    y = x.clone()
    y[0] += 0.1
    y[1] += 0.01
    assert psnr(x, y) == pytest.approx(30.0, abs=1e-4)


def test_shape_mismatch_raises():
    with pytest.raises(ParameterError):
        psnr(torch.zeros(3, 8, 8), torch.zeros(3, 8, 9))
    with pytest.raises(ParameterError):
        ms_ssim(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8))


def test_ms_ssim_identical_and_monotone_in_noise():
    x = smooth_image(192, 192)
    assert ms_ssim_scales(192, 192) == 5
    assert ms_ssim(x, x) == pytest.approx(1.0, abs=1e-6)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g)
    values = [ms_ssim(x, (x + s * noise).clamp(0, 1)) for s in (0.01, 0.03, 0.1, 0.3)]
    assert all(a > b for a, b in itertools.pairwise(values)), values
    assert 0.0 <= values[-1] < values[0] < 1.0


def test_ms_ssim_matches_pytorch_msssim_when_installed():
    if importlib.util.find_spec("pytorch_msssim") is None:
        pytest.skip("pytorch_msssim not installed (only used as a cross-check)")
    from pytorch_msssim import ms_ssim as ref

    x = smooth_image(192, 192).unsqueeze(0)
    y = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    assert ms_ssim(x, y) == pytest.approx(float(ref(x, y, data_range=1.0)), abs=1e-4)


def test_ms_ssim_small_images_use_fewer_scales():
    assert ms_ssim_scales(64, 96) == 3
    assert ms_ssim_scales(11, 11) == 1
    x = smooth_image(40, 40)
    assert ms_ssim(x, x) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ParameterError, match="at least 11x11"):
        ms_ssim(torch.zeros(3, 10, 64), torch.zeros(3, 10, 64))


def test_bpp():
    assert bpp(4800, 768, 512) == pytest.approx(8 * 4800 / (768 * 512))
    with pytest.raises(ParameterError):
        bpp(10, 0, 5)


def test_weightless_metrics_always_available():
    for name in ("psnr", "ms_ssim"):
        av = metric_availability(name)
        assert av.available and av.name == name


def test_lpips_unavailable_names_the_file(empty_torch_home):
    av = metric_availability("lpips")
    assert not av.available
    expected = empty_torch_home / "hub" / "pyiqa" / "LPIPS_v0.1_alex-df73285e.pth"
    assert str(expected) in av.reason
    assert str(empty_torch_home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth") in av.reason
    assert av.reason.startswith("unavailable: weights not found at")
    assert not list(empty_torch_home.rglob("*.pth")), "availability must not download or create files"


def test_compute_metrics_gives_none_without_weights(empty_torch_home):
    x = smooth_image(64, 64)
    y = (x + 0.05).clamp(0, 1)
    out = compute_metrics(x, y)
    assert set(out) == {"psnr", "ms_ssim", "lpips", "dists"}
    assert out["lpips"] is None and out["dists"] is None
    assert out["psnr"] > 20 and 0 < out["ms_ssim"] < 1
    notes = metric_notes(["psnr", "ms_ssim", "lpips", "dists"])
    assert set(notes) == {"lpips", "dists"}
    assert "DISTS_weights-f5e65c96.pth" in notes["dists"] and "vgg16-397923af.pth" in notes["dists"]
    with pytest.raises(ModelNotFoundError, match="LPIPS_v0.1_alex"):
        load_learned_metric("lpips")


def test_present_files_make_metric_available_but_fake_file_is_refused(empty_torch_home):
    for path in metric_weight_files("lpips"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not a checkpoint")
    assert metric_availability("lpips").available
    assert not metric_availability("dists").available  # needs other files
    # A file that is not the real checkpoint is refused before any network is touched.
    with pytest.raises(ModelNotFoundError, match="cannot read weights"):
        load_learned_metric("lpips")


def test_unknown_metric_and_fid_not_per_pair(empty_torch_home):
    with pytest.raises(ParameterError, match="unknown metric"):
        metric_availability("nope")
    assert not metric_availability("fid").available
    with pytest.raises(ParameterError, match="sets of images"):
        compute_metrics(torch.zeros(3, 16, 16), torch.zeros(3, 16, 16), names=("fid",))


def test_weight_file_names_match_installed_pyiqa_and_torchvision(empty_torch_home):
    spec = importlib.util.find_spec("pyiqa")
    if spec is None or spec.origin is None:
        pytest.skip("pyiqa not installed")
    archs = Path(spec.origin).parent / "archs"
    sources = {n: (archs / n).read_text() for n in ("lpips_arch.py", "dists_arch.py", "inception.py")}
    assert "LPIPS_v0.1_alex-df73285e.pth" in sources["lpips_arch.py"]
    assert "LPIPS_v0.1_vgg-a78928a0.pth" in sources["lpips_arch.py"]
    assert "DISTS_weights-f5e65c96.pth" in sources["dists_arch.py"]
    assert "pt_inception-2015-12-05-6726825d.pth" in sources["inception.py"]
    from torchvision.models import AlexNet_Weights, VGG16_Weights

    names = {p.name for n in ("lpips", "lpips_vgg", "dists") for p in metric_weight_files(n)}
    assert AlexNet_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1] in names
    assert VGG16_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1] in names


def test_lf_psnr_ignores_detail_inside_blocks_but_sees_colour():
    torch.manual_seed(0)
    x = torch.rand(3, 32, 48) * 0.5 + 0.25
    # a zero-mean pattern inside every 8x8 block leaves the block means unchanged
    checker = ((torch.arange(32)[:, None] + torch.arange(48)[None]) % 2).float() * 0.2 - 0.1
    assert lf_psnr(x + checker, x) > 100  # equal up to float rounding
    assert psnr(x + checker, x) < 25
    shifted = x.clone()
    shifted[1] += 0.1  # a colour cast: every block mean of the green channel moves by 0.1
    assert lf_psnr(shifted, x) == pytest.approx(10 * math.log10(3 / 0.01), rel=1e-6)
    with pytest.raises(ParameterError):
        lf_psnr(torch.rand(3, 4, 4), torch.rand(3, 4, 4))


def test_sharpness_is_one_for_the_reference_and_falls_with_blur():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 64)
    assert sharpness(x, x) == pytest.approx(1.0)
    assert sharpness(2 * x, x) == pytest.approx(2.0)  # gradients scale linearly
    blurred = [torch.nn.functional.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False) for k in (3, 5, 9)]
    values = [sharpness(b, x) for b in blurred]
    assert 1.0 > values[0] > values[1] > values[2] > 0
    with pytest.raises(ParameterError, match="flat"):
        sharpness(x, torch.full_like(x, 0.5))
