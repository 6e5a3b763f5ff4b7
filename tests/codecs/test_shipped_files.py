"""One small file per codec, made with the shipped weights, keeps decoding to the pixels it decoded to
when it was written (``tests/data/shipped_*``).

The files are 128x96 crops of the shipped photo (``egc_lite/assets/coffee.png``): ``guide`` at 0.3 bpp,
``textinv`` on egc-tiny (4 DDIM steps, 4 inversion steps) and ``diffeic`` on egc-tiny's rate point q1
(4 DDIM steps). ``shipped_decodings.json`` records, for each, the SHA-256 of the decoded float32 pixels
and the machine that decoded them (torch version, the CPU's vector capability, whether it has fast
bf16, the backbone's inference precision and the thread count); ``shipped_<codec>.png`` holds the
8-bit decoding.

* The guide codec (WebP decoding and bicubic upsampling) must decode bit for bit everywhere.
* The diffusion codecs decode bit for bit on a machine like the recorder's (the decode runs on the
  recorded thread count when this machine has that many); elsewhere bf16 and float32 results
  legitimately differ, and the decoding must stay within :data:`MIN_PSNR` of the stored PNG (measured
  here, a float32 decode against the recorded bf16 one: 31.4 dB for ``textinv``, whose four steps start
  from noise and are guided, and 50.8 dB for ``diffeic``, which starts from its content variables; a
  decoder that went wrong lands far below).

Rewrite the fixtures only when a change of the decoded pixels is intended:
``python tests/codecs/test_shipped_files.py`` (with ``OMP_NUM_THREADS=1``, ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).resolve().parents[1] / "data"
RECORD = DATA / "shipped_decodings.json"
CODECS = ("guide", "textinv", "diffeic")
#: Crop of the shipped photo (left, top, width, height).
CROP = (160, 112, 128, 96)
#: PSNR (dB) a diffusion codec's decoding must keep against the stored PNG on another machine or precision.
MIN_PSNR = {"textinv": 28.0, "diffeic": 40.0}


def fixture_image() -> torch.Tensor:
    from egc_lite.data import DEMO_IMAGE, load_image

    left, top, w, h = CROP
    return load_image(DEMO_IMAGE)[:, top : top + h, left : left + w].contiguous()


def options(codec: str):
    from egc_lite.codecs import CompressOptions

    return {"guide": CompressOptions(bpp=0.3),
            "textinv": CompressOptions(bpp=0.3, steps=4, inversion_steps=4, seed=3),
            "diffeic": CompressOptions(quality=1, steps=4, seed=3)}[codec]


def pixels_sha256(y: torch.Tensor) -> str:
    return hashlib.sha256(y.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()


def machine(backbone) -> dict:
    """What the decoded pixels of a diffusion codec may depend on."""
    from egc_lite.precision import cpu_has_fast_bf16

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "fast_bf16": cpu_has_fast_bf16(), "precision": None if backbone is None else backbone.inference_precision,
            "threads": torch.get_num_threads()}


@contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load(codec: str):
    from egc_lite.codecs import load_codec

    return load_codec(codec, device="cpu")


def write_fixtures() -> None:
    """Compress the crop with each codec, decode the file and record the decoding (today's code)."""
    from egc_lite.coding.bitstream import read_bitstream, write_bitstream
    from egc_lite.data import save_image

    x = fixture_image()
    record = {}
    for name in CODECS:
        codec = load(name)
        path = DATA / f"shipped_{name}.egc"
        write_bitstream(path, codec.compress(x, options(name)))
        y = codec.decompress(read_bitstream(path))
        save_image(y, DATA / f"shipped_{name}.png")
        record[name] = {"sha256": pixels_sha256(y), "machine": machine(codec.backbone)}
    RECORD.write_text(json.dumps(record, indent=1) + "\n")


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads(RECORD.read_text())


@pytest.mark.parametrize("name", CODECS)
def test_shipped_file_decodes_to_its_recorded_pixels(name, record):
    from egc_lite.coding.bitstream import read_bitstream
    from egc_lite.data import load_image, pil_to_tensor, tensor_to_pil
    from egc_lite.metrics import psnr

    codec = load(name)
    bs = read_bitstream(DATA / f"shipped_{name}.egc", expected_backbone_id=codec.backbone_id or None)
    rec = record[name]
    n = rec["machine"]["threads"]
    with threads(n if n <= (os.cpu_count() or 1) else torch.get_num_threads()):
        here = machine(codec.backbone)
        y = codec.decompress(bs)
    stored = load_image(DATA / f"shipped_{name}.png")
    y8 = pil_to_tensor(tensor_to_pil(y))
    if name == "guide":
        assert pixels_sha256(y) == rec["sha256"] and torch.equal(y8, stored), "the guide codec must decode bit for bit"
        return
    if here == rec["machine"]:
        assert pixels_sha256(y) == rec["sha256"], f"same machine and precision as recorded ({here}), other pixels"
        assert torch.equal(y8, stored)
        return
    p = psnr(y8, stored)
    assert p > MIN_PSNR[name], (f"decoded on {here}, recorded on {rec['machine']}: bit-exactness is not expected across "
                          f"machines or precisions, but PSNR against the stored decoding is only {p:.2f} dB")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    write_fixtures()
    print(RECORD.read_text())
