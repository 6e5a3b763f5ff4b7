"""Hostile files (issue 11, fault 9): a structure-aware fuzzer per codec. Each case is a valid file whose
header fields or payloads were rewritten and re-encoded with a valid checksum; decoding must give an
image of the header's size or a BitstreamError, never an allocation error, and files whose size
their payloads cannot match are refused before anything is decoded."""

from __future__ import annotations

import dataclasses
import random
import resource
import sys
import zlib

import pytest
import torch

from egc_lite.codecs import CompressOptions, DiffEICCodec, GuideCodec, TextInvCodec, TextInvConfig
from egc_lite.codecs.textual_inversion import InversionConfig
from egc_lite.coding.bitstream import Bitstream, decode_bitstream, encode_bitstream
from egc_lite.errors import BitstreamError
from egc_lite.sampling.ddim import SamplerConfig

SIDES = (1, 7, 8, 63, 64, 65, 200, 4096, 65535)
INTS = (-(2**63), -1, 0, 1, 2, 3, 7, 64, 65, 1000, 1001, 2**31, 2**62)


@pytest.fixture(scope="module")
def valid(tiny_backbone, smooth_image):
    from egc_lite.coding.entropy import update_tables
    from egc_lite.models.diffeic.config import DiffEICConfig
    from egc_lite.models.diffeic.model import DiffEICModel

    x = smooth_image(64, 64, seed=4)
    model = DiffEICModel.for_backbone(DiffEICConfig(N=8, M=8), tiny_backbone, seed=0).eval()
    update_tables(model.compressor, update_quantiles=True)
    codecs = {
        "guide": GuideCodec(),
        "textinv": TextInvCodec(tiny_backbone, TextInvConfig(inversion=InversionConfig(steps=1),
                                                             sampler=SamplerConfig(steps=2, guidance_scale=2.0))),
        "diffeic": DiffEICCodec(tiny_backbone, model=model),
    }
    opts = {"guide": CompressOptions(bpp=0.5), "textinv": CompressOptions(bpp=0.5, steps=2),
            "diffeic": CompressOptions(steps=2, eta=0.5)}  # eta: its header field is fuzzed too
    return {name: (codec, codec.compress(x, opts[name])) for name, codec in codecs.items()}


def _mutate(bs: Bitstream, rng: random.Random) -> Bitstream:
    kinds = ["size", "size"] + ["param", "param"] * bool(bs.params) + ["section"] * bool(bs.sections)
    kind = rng.choice(kinds + ["drop"] * bool(bs.params or bs.sections))  # an earlier mutation may have emptied one
    if kind == "size":
        return dataclasses.replace(bs, height=rng.choice(SIDES), width=rng.choice(SIDES))
    params, sections = dict(bs.params), dict(bs.sections)
    if kind == "param":
        key = rng.choice(sorted(params))
        params[key] = rng.choice(INTS + (True, "x", 0.5))
    elif kind == "section":
        name = rng.choice(sorted(sections))
        data = sections[name]
        how = rng.choice(["cut", "random", "grow", "empty", "swap"])
        if how == "cut":
            data = data[: rng.randrange(len(data) + 1)]
        elif how == "random":
            data = bytes(rng.randrange(256) for _ in range(len(data)))
        elif how == "grow":
            data = data * rng.choice((2, 50, 2000))
        elif how == "empty":
            data = b""
        else:
            other = rng.choice(sorted(sections))
            data = sections[other]
        sections[name] = data[: 8 * 1024 * 1024]
    else:
        pool = sorted(params) + [f"section:{n}" for n in sections]
        victim = rng.choice(pool)
        if victim.startswith("section:"):
            sections.pop(victim[8:])
        else:
            params.pop(victim)
    return dataclasses.replace(bs, params=params, sections=sections)


def _peak_bytes() -> int:
    """The process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


@pytest.mark.parametrize("name", ["guide", "textinv", "diffeic"])
def test_structure_aware_fuzz(valid, name, monkeypatch):
    budget = 0.5 * 2**30
    monkeypatch.setenv("EGC_DECODE_BUDGET_GB", "0.5")
    codec, good = valid[name]
    rng = random.Random(zlib.crc32(name.encode()))  # the same cases in every process (hash() of a str is salted)
    outcomes = {"decoded": 0, "refused": 0}
    # measured, not estimated: a file the decoder accepts may not take it past the budget. (With the tiny
    # backbone a 1x65535 header beside 64x64 payloads took ~0.9 GB before the fix; with SD, gigabytes.
    # The peak only ever grows, so this catches a decode that outgrows everything before it.)
    peak = _peak_bytes()
    for _ in range(40):
        bs = _mutate(good, rng)
        if rng.random() < 0.3:
            bs = _mutate(bs, rng)
        try:
            data = encode_bitstream(bs)  # a valid checksum
        except Exception:
            continue  # the container cannot even hold this (e.g. a bool where an int goes is fine, a huge file is not)
        parsed = decode_bitstream(data)
        try:
            y = codec.decompress(parsed)
        except BitstreamError:
            outcomes["refused"] += 1
            continue
        assert y.shape == (3, parsed.height, parsed.width) and bool(torch.isfinite(y).all())
        grown = _peak_bytes() - peak
        assert grown < budget, f"a {parsed.width}x{parsed.height} file was decoded with {grown / 2**30:.2f} GiB, over the budget"
        outcomes["decoded"] += 1
    assert outcomes["refused"] > 5


@pytest.mark.parametrize("name", ["textinv", "diffeic"])
@pytest.mark.parametrize("size", [(1, 65535), (64, 65535), (8, 65535)])
def test_a_header_size_beside_payloads_of_another_image_is_refused_before_decoding(valid, name, size, monkeypatch):
    """The issue's case: a header claiming a 1x65535 image beside the payloads of a 64x64 one."""
    import egc_lite.codecs.textinv as ta
    import egc_lite.sampling.ddim as sampling
    from egc_lite.models.diffeic.compressor import LatentCompressor

    monkeypatch.setenv("EGC_DECODE_BUDGET_GB", "0.5")

    def boom(*a, **k):
        raise AssertionError("the decoder allocated before checking the header")

    monkeypatch.setattr(LatentCompressor, "decompress", boom)
    monkeypatch.setattr(ta, "decompress_gaussian", boom)
    monkeypatch.setattr(sampling, "ddim_sample", boom)
    codec, good = valid[name]
    bs = decode_bitstream(encode_bitstream(dataclasses.replace(good, height=size[0], width=size[1])))
    with pytest.raises(BitstreamError, match="header|budget|payload"):
        codec.decompress(bs)


def test_budget_estimate_grows_with_the_claimed_size(tiny_backbone):
    from egc_lite.models.memory import backbone_decode_bytes

    small = backbone_decode_bytes(tiny_backbone, 64, 64)
    wide = backbone_decode_bytes(tiny_backbone, 64, 65535)
    assert wide > small + 200 * 2**20  # a thousand times the pixels: hundreds of MiB more


def test_budget_counts_the_backward_pass_of_each_guidance_mode(tiny_backbone):
    """fast keeps the decoder's maps for a backward pass, full also the UNet's: none < decoder < all."""
    from egc_lite.models.memory import backbone_decode_bytes
    from egc_lite.sampling.guidance import CompressionGuidanceConfig

    none, dec, full = (backbone_decode_bytes(tiny_backbone, 256, 256, grad=CompressionGuidanceConfig(mode=m).backward)
                       for m in ("latent", "fast", "full"))
    assert none < dec < full
    with pytest.raises(ValueError, match="grad"):
        backbone_decode_bytes(tiny_backbone, 64, 64, grad=True)
