"""Tests of egc_lite.data: image conversions, padding, errors, data folders (no network)."""

from __future__ import annotations

import struct
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from egc_lite import data
from egc_lite.data import (
    crop_to,
    kodak_dir,
    kodak_on_disk,
    kodak_paths,
    list_images,
    load_image,
    pad_to_multiple,
    pil_to_tensor,
    save_image,
    tensor_to_pil,
    training_photos_dir,
)
from egc_lite.errors import EGCError, ImageError, ParameterError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data(monkeypatch: pytest.MonkeyPatch) -> Path:
    if not (SHARED_DATA / "kodak").is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent on this machine")
    monkeypatch.setenv("EGC_DATA", str(SHARED_DATA))
    monkeypatch.delenv("EGC_TRAIN_DATA", raising=False)
    return SHARED_DATA


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every urlopen fail; returns the list of URLs that were tried."""
    tried: list[str] = []

    def fail(url, *args, **kwargs):
        tried.append(url if isinstance(url, str) else url.full_url)
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(urllib.request, "urlopen", fail)
    return tried


def _check(x: torch.Tensor, h: int, w: int) -> None:
    assert x.dtype == torch.float32
    assert tuple(x.shape) == (3, h, w)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


# --------------------------------------------------------------------------- conversions


def _rgb_array(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("size", [(17, 5), (1, 1), (8, 33)])
def test_rgb_png_roundtrip(tmp_path: Path, size: tuple[int, int]) -> None:
    w, h = size
    arr = _rgb_array(h, w)
    Image.fromarray(arr).save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png")
    _check(x, h, w)
    assert torch.equal((x * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(arr))
    save_image(x, tmp_path / "sub" / "b.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "sub" / "b.png")), arr)


def test_grey_and_bilevel(tmp_path: Path) -> None:
    g = np.arange(17 * 5, dtype=np.uint8).reshape(5, 17) * 3
    Image.fromarray(g).save(tmp_path / "g.png")
    x = load_image(tmp_path / "g.png")
    _check(x, 5, 17)
    assert torch.allclose(x[0], torch.from_numpy(g).float() / 255) and torch.equal(x[0], x[2])

    b = Image.new("1", (6, 3), 0)
    b.putpixel((2, 1), 1)
    b.save(tmp_path / "b.png")
    x = load_image(tmp_path / "b.png")
    _check(x, 3, 6)
    assert float(x[:, 1, 2].min()) == 1.0 and float(x.sum()) == 3.0


def test_16bit_png_scaled(tmp_path: Path) -> None:
    a = np.array([[0, 1000, 32768], [65535, 12345, 7]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode in ("I", "I;16")  # Pillow opens 16-bit grey PNG as one of these
    x = load_image(tmp_path / "g16.png")
    _check(x, 2, 3)
    assert float(x.max()) == 1.0 and float(x[0, 1, 0]) == 1.0
    assert torch.allclose(x[1], torch.from_numpy(a.astype(np.float32) / 65535.0))


def test_mode_I_and_F(tmp_path: Path) -> None:
    i32 = Image.fromarray(np.array([[0, 65535, 70000, -5]], dtype=np.int32))
    x = pil_to_tensor(i32)
    assert x[0, 0].tolist() == [0.0, 1.0, 1.0, 0.0]
    f = Image.fromarray(np.array([[0.25, 1.5, -1.0]], dtype=np.float32))
    assert pil_to_tensor(f)[1, 0].tolist() == [0.25, 1.0, 0.0]


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    a = np.zeros((5, 17, 4), dtype=np.uint8)
    a[..., 0] = 255  # red
    a[:, :8, 3] = 255  # opaque left
    a[:, 8:16, 3] = 0  # transparent middle
    a[:, 16, 3] = 128  # half transparent right column
    Image.fromarray(a).save(tmp_path / "rgba.png")
    x = load_image(tmp_path / "rgba.png")
    _check(x, 5, 17)
    assert x[:, :, :8].tolist() == torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 5, 8).tolist()
    assert float(x[:, :, 8:16].min()) == 1.0  # transparent -> white
    assert torch.allclose(x[:, 0, 16], torch.tensor([1.0, 127 / 255, 127 / 255]), atol=1e-6)

    la = Image.fromarray(np.stack([np.zeros((2, 2), np.uint8), np.array([[255, 0], [0, 255]], np.uint8)], -1))
    y = pil_to_tensor(la)
    assert y[0].tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    arr = _rgb_array(5, 17, seed=1) // 64 * 64  # few colours
    p = Image.fromarray(arr).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    p.save(tmp_path / "p.png")
    x = load_image(tmp_path / "p.png")
    _check(x, 5, 17)
    assert torch.allclose(x, pil_to_tensor(p.convert("RGB")))

    q = Image.new("P", (4, 2), 0)
    q.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    q.putpixel((1, 0), 1)
    q.info["transparency"] = 0
    q.save(tmp_path / "pt.png", transparency=0)
    y = load_image(tmp_path / "pt.png")
    _check(y, 2, 4)
    assert float(y[:, 1, 0].min()) == 1.0  # transparent index -> white
    assert torch.allclose(y[:, 0, 1], torch.tensor([200, 100, 0]) / 255.0)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (9, 7), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
    x = load_image(tmp_path / "c.jpg")
    _check(x, 7, 9)
    assert float(x[0].mean()) > 0.8 and float(x[1].mean()) < 0.2  # red


def test_exif_orientation_applied(tmp_path: Path) -> None:
    img = Image.fromarray(_rgb_array(2, 6, seed=2))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "o.jpg", exif=exif, quality=100)
    x = load_image(tmp_path / "o.jpg")
    _check(x, 6, 2)


def test_tensor_to_pil_rounds_and_clips() -> None:
    x = torch.tensor([0.0, 0.5 / 255, 1.49 / 255, 1.51 / 255, 2.0, -1.0, float("nan"), 1.0]).view(1, 1, 8)
    x = x.expand(3, 2, 8).double()
    img = tensor_to_pil(x.unsqueeze(0))
    assert img.mode == "RGB" and img.size == (8, 2)
    assert np.asarray(img)[0, :, 0].tolist() == [0, 0, 1, 2, 255, 0, 0, 255]
    with pytest.raises(ParameterError):
        tensor_to_pil(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ParameterError):
        tensor_to_pil(torch.zeros(4, 4))


# --------------------------------------------------------------------------- errors


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)


def test_not_an_image_and_empty(tmp_path: Path) -> None:
    (tmp_path / "t.png").write_text("hello, I am text")
    with pytest.raises(ImageError, match="not an image"):
        load_image(tmp_path / "t.png")
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(tmp_path / "e.png")


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_truncated(tmp_path: Path, fmt: str) -> None:
    Image.fromarray(_rgb_array(64, 64, seed=3)).save(tmp_path / f"full.{fmt}")
    raw = (tmp_path / f"full.{fmt}").read_bytes()
    (tmp_path / f"cut.{fmt}").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageError, match="truncated"):
        load_image(tmp_path / f"cut.{fmt}")


def _png_with_header_size(path: Path, w: int, h: int) -> None:
    """A tiny PNG whose header claims ``w`` x ``h`` pixels (no pixel data is allocated at open)."""
    Image.new("1", (8, 8)).save(path)
    raw = bytearray(path.read_bytes())
    assert raw[12:16] == b"IHDR"
    raw[16:24] = struct.pack(">II", w, h)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(raw))


def test_too_many_pixels(tmp_path: Path) -> None:
    _png_with_header_size(tmp_path / "big.png", 9000, 9000)  # 81 M: above our limit, below Pillow's
    with pytest.raises(ImageError, match="too many pixels|more than the limit"):
        load_image(tmp_path / "big.png")
    _png_with_header_size(tmp_path / "huge.png", 20000, 20000)  # 400 M: Pillow's bomb error
    with pytest.raises(ImageError, match="too many pixels|more than the limit"):
        load_image(tmp_path / "huge.png")


def test_zero_size_image_rejected() -> None:
    with pytest.raises(ImageError, match="no pixels"):
        pil_to_tensor(Image.new("RGB", (0, 4)))


# --------------------------------------------------------------------------- padding


@pytest.mark.parametrize("mode", ["replicate", "reflect", "circular", "constant"])
@pytest.mark.parametrize("hw", [(5, 3), (1, 1), (64, 64), (65, 130), (2, 70)])
def test_pad_crop_roundtrip(mode: str, hw: tuple[int, int]) -> None:
    h, w = hw
    x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(h * 1000 + w))
    y, size = pad_to_multiple(x, 64, mode)
    assert size == (h, w)
    assert y.shape[:2] == x.shape[:2] and y.shape[-2] % 64 == 0 and y.shape[-1] % 64 == 0
    assert y.shape[-2] - h < 64 and y.shape[-1] - w < 64 and y.shape[-2] >= h
    assert torch.equal(crop_to(y, size), x)
    if mode == "replicate":
        assert torch.equal(y[..., -1, -1], x[..., -1, -1])


@pytest.mark.parametrize("mode", ["replicate", "reflect", "circular"])
def test_pad_matches_torch_when_torch_can(mode: str) -> None:
    x = torch.rand(1, 2, 30, 20)
    y, _ = pad_to_multiple(x, 16, mode)
    ref = torch.nn.functional.pad(x, (0, 12, 0, 2), mode=mode)
    assert torch.equal(y, ref)


def test_pad_reflect_small_image_mirrors() -> None:
    x = torch.tensor([[[[1.0, 2.0, 3.0]]]])
    y, _ = pad_to_multiple(x, 8, "reflect")
    assert y[0, 0, 0].tolist() == [1, 2, 3, 2, 1, 2, 3, 2]
    assert y.shape == (1, 1, 8, 8) and torch.equal(y[0, 0, 7], y[0, 0, 0])


def test_pad_errors_and_noop() -> None:
    x = torch.rand(1, 3, 16, 32)
    y, size = pad_to_multiple(x, 16)
    assert y is x and size == (16, 32)
    assert pad_to_multiple(torch.rand(3, 5, 7), 4)[0].shape == (3, 8, 8)
    with pytest.raises(ParameterError):
        pad_to_multiple(x, 0)
    with pytest.raises(ParameterError):
        pad_to_multiple(x, 8, "mirror")
    with pytest.raises(ParameterError):
        crop_to(x, (17, 4))


# --------------------------------------------------------------------------- data folders


def test_kodak_from_egc_data(shared_data: Path, no_network: list[str]) -> None:
    assert kodak_dir() == shared_data / "kodak"
    paths = kodak_paths([1, 24])
    assert [p.name for p in paths] == ["kodim01.png", "kodim24.png"]
    assert len(kodak_paths()) == 24
    x = data.load_kodak(1)
    assert x.shape[0] == 3 and sorted(x.shape[1:]) == [512, 768]
    assert no_network == []
    with pytest.raises(ParameterError):
        kodak_paths([0])
    with pytest.raises(ParameterError):
        kodak_paths([25])


def test_kodak_egc_data_missing_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network) -> None:
    (tmp_path / "kodak").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "kodak" / "kodim01.png")
    monkeypatch.setenv("EGC_DATA", str(tmp_path))
    with pytest.raises(EGCError) as err:
        kodak_dir()
    msg = str(err.value)
    assert str(tmp_path / "kodak") in msg and "kodim02.png" in msg and "EGC_DATA" in msg
    assert kodak_paths([1])[0] == tmp_path / "kodak" / "kodim01.png"  # only what is asked must exist
    assert no_network == []


def test_kodak_on_disk_looks_in_egc_data_then_the_cache_and_never_downloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[str]
) -> None:
    monkeypatch.setenv("EGC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert kodak_on_disk(23) is None  # neither folder exists: no error, no download
    cached = tmp_path / "cache" / "egc_lite" / "kodak" / "kodim23.png"
    cached.parent.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(cached)
    assert kodak_on_disk(23) == cached
    own = tmp_path / "data" / "kodak" / "kodim23.png"
    own.parent.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(own)
    assert kodak_on_disk(23) == own
    assert kodak_on_disk(22) is None
    with pytest.raises(ParameterError):
        kodak_on_disk(25)
    assert no_network == []


def test_kodak_download_failure_says_how_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[str]
) -> None:
    monkeypatch.delenv("EGC_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(EGCError) as err:
        kodak_dir()
    msg = str(err.value)
    assert "EGC_DATA" in msg and "kodak" in msg and "r0k.us" in msg
    assert no_network == [data.KODAK_URL.format(1)]
    assert not list((tmp_path / "cache" / "egc_lite" / "kodak").iterdir())  # no partial files
    with pytest.raises(EGCError, match="EGC_DATA"):
        kodak_dir(download=False)


def test_kodak_download_writes_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The download path with a fake server (no network): files land atomically in the cache."""
    monkeypatch.delenv("EGC_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    Image.new("RGB", (3, 2), (10, 20, 30)).save(tmp_path / "src.png")
    payload = (tmp_path / "src.png").read_bytes()

    class FakeResponse:
        def __init__(self, body: bytes) -> None:
            self.body = body

        def read(self) -> bytes:
            return self.body

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            return None

    urls: list[str] = []

    def fake_urlopen(url, timeout=None):
        assert timeout is not None and timeout <= 30
        urls.append(url)
        return FakeResponse(payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    paths = kodak_paths([3, 5])
    assert urls == [data.KODAK_URL.format(3), data.KODAK_URL.format(5)]
    assert all(p.read_bytes() == payload for p in paths)
    assert sorted(p.name for p in paths[0].parent.iterdir()) == ["kodim03.png", "kodim05.png"]
    kodak_paths([3])  # cached: no second download
    assert len(urls) == 2

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: FakeResponse(b"<html>portal</html>"))
    with pytest.raises(EGCError, match="EGC_DATA"):
        kodak_paths([7])
    assert not (paths[0].parent / "kodim07.png").exists()


def test_training_photos_dir(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert training_photos_dir() == shared_data / "photos-train"
    assert len(list_images(training_photos_dir())) >= 1
    monkeypatch.setenv("EGC_TRAIN_DATA", str(tmp_path / "absent"))
    with pytest.raises(EGCError, match="does not exist"):
        training_photos_dir()
    monkeypatch.setenv("EGC_TRAIN_DATA", str(tmp_path))
    with pytest.raises(EGCError, match="no images"):
        training_photos_dir()
    monkeypatch.delenv("EGC_TRAIN_DATA")
    monkeypatch.delenv("EGC_DATA")
    with pytest.raises(EGCError, match="EGC_TRAIN_DATA"):
        training_photos_dir()


def test_list_images(tmp_path: Path) -> None:
    for name in ["b.PNG", "a.jpg", "c.jpeg", "d.webp", "e.bmp", "f.tif", "g.txt", ".h.png"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.jpeg", "d.webp", "e.bmp", "f.tif"]
    with pytest.raises(EGCError):
        list_images(tmp_path / "missing")
