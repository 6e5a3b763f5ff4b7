"""Tests of egc_lite.coding.entropy and egc_lite.coding.range_coding: quantization, rates, tables, exact and
cross-process round trips."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import nn

from egc_lite.coding.entropy import (
    bin_probabilities,
    estimate_bits_factorized,
    estimate_bits_gaussian,
    fit_factorized,
    likelihood_bits,
    quantize,
    scale_indexes,
    tables_ready,
    update_tables,
)
from egc_lite.coding.range_coding import (
    MIN_CODED_SYMBOLS,
    GaussianStreamDecoder,
    GaussianStreamEncoder,
    compress_factorized,
    compress_gaussian,
    decompress_factorized,
    decompress_gaussian,
)
from egc_lite.errors import BitstreamError, ParameterError

REPO = Path(__file__).resolve().parents[2]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _medians(eb: EntropyBottleneck, ndim: int) -> torch.Tensor:
    return eb.quantiles.detach()[:, 0, 1].reshape(1, -1, *([1] * (ndim - 2)))


def _bottleneck(channels: int, seed: int = 0) -> EntropyBottleneck:
    torch.manual_seed(seed)
    eb = EntropyBottleneck(channels)
    update_tables(eb)
    return eb


@pytest.fixture(scope="module")
def trained() -> EntropyBottleneck:
    """An EntropyBottleneck fitted briefly to Laplacian data of scale 2 (about 1 s)."""
    dist = torch.distributions.Laplace(0.0, torch.tensor([0.5, 1.0, 2.0, 4.0]))
    sample = lambda g: dist.sample(torch.Size([32, 32])).permute(2, 0, 1).unsqueeze(0)  # noqa: E731  (1, 4, 32, 32)
    eb = fit_factorized(EntropyBottleneck(4), sample, 150)
    return eb


# --------------------------------------------------------------------------- quantize, bits


def test_quantize_modes() -> None:
    x = torch.linspace(-3, 3, 101, requires_grad=True)
    noisy = quantize(x, "noise")
    assert float((noisy - x).detach().abs().max()) <= 0.5 and not torch.equal(noisy, x)
    m = torch.full_like(x, 0.3)
    assert torch.equal(quantize(x, "round", m), torch.round(x - m) + m)
    assert torch.equal(quantize(x, "round"), torch.round(x))
    q = quantize(x, "ste", m)
    assert torch.allclose(q, torch.round(x - m) + m)
    q.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    with pytest.raises(ParameterError):
        quantize(x, "floor")  # type: ignore[arg-type]


def test_likelihood_bits() -> None:
    p = torch.tensor([0.5, 0.25, 1.0], requires_grad=True)
    bits = likelihood_bits(p)
    assert bits.dim() == 0 and float(bits.detach()) == pytest.approx(3.0)
    bits.backward()
    assert p.grad is not None and float(p.grad[0]) < 0
    assert float(likelihood_bits([p.detach(), torch.tensor([0.125])])) == pytest.approx(6.0)
    assert float(likelihood_bits({"y": p.detach(), "z": torch.tensor([0.5, 0.5])})) == pytest.approx(5.0)
    assert float(likelihood_bits([])) == 0.0


# --------------------------------------------------------------------------- tables


def test_update_tables_nested_and_defaults() -> None:
    model = nn.ModuleDict({"eb": EntropyBottleneck(3), "gc": GaussianConditional(None)})
    assert not tables_ready(model)
    with pytest.raises(ParameterError, match="update_tables"):
        compress_factorized(model["eb"], torch.zeros(1, 3, 4))
    update_tables(model)
    assert tables_ready(model)
    gc = model["gc"]
    assert gc.scale_table.numel() == 64 and float(gc.scale_table[0]) == pytest.approx(0.11)
    assert gc._quantized_cdf.shape[0] == 64 and model["eb"]._quantized_cdf.shape[0] == 3
    before = model["eb"]._quantized_cdf.clone()
    with torch.no_grad():
        model["eb"].quantiles[:, 0, 2] += 5
    update_tables(model, force=False)  # leaves built tables alone
    assert torch.equal(model["eb"]._quantized_cdf, before)
    update_tables(model)
    assert model["eb"]._quantized_cdf.shape[1] > before.shape[1]


def test_float64_module_uses_float32_tables() -> None:
    torch.manual_seed(1)
    eb32 = EntropyBottleneck(2)
    eb64 = EntropyBottleneck(2)
    eb64.load_state_dict(eb32.state_dict())
    eb64.double()
    update_tables(eb32)
    update_tables(eb64)
    assert eb64.quantiles.dtype == torch.float64  # the module is not converted
    for name in ("_quantized_cdf", "_cdf_length", "_offset"):
        assert torch.equal(getattr(eb32, name), getattr(eb64, name))
    x = torch.randn(1, 2, 50, generator=_gen(2)) * 4
    assert compress_factorized(eb64, x.double()) == compress_factorized(eb32, x)
    assert estimate_bits_factorized(eb64, x) == pytest.approx(estimate_bits_factorized(eb32, x), rel=1e-6)


def test_half_and_double_inputs_convert() -> None:
    eb = _bottleneck(4)
    x = torch.randn(1, 4, 8, 8, generator=_gen(3)) * 5
    data = compress_factorized(eb, x.half())
    assert data == compress_factorized(eb, x.half().float())
    out = decompress_factorized(eb, data, (8, 8))
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    gc = GaussianConditional(None)
    update_tables(gc)
    y = torch.randn(40, generator=_gen(4)) * 3
    s = torch.rand(40, generator=_gen(5)) * 4
    assert compress_gaussian(gc, y.double(), s.double()) == compress_gaussian(gc, y, s)


def test_meta_module_refused() -> None:
    eb = EntropyBottleneck(2).to("meta")
    with pytest.raises(ParameterError, match="meta"):
        update_tables(eb)


# --------------------------------------------------------------------------- exact round trips


@pytest.mark.parametrize("shape", [(1, 4, 16, 24), (1, 3, 7), (1, 2), (1, 5, 2, 3, 4), (1, 4, 1), (1, 1, 1), (1, 6, 0)])
def test_factorized_roundtrip(shape: tuple[int, ...]) -> None:
    eb = _bottleneck(shape[1])
    x = torch.randn(*shape, generator=_gen(sum(shape))) * 6
    data = compress_factorized(eb, x)
    out = decompress_factorized(eb, data, shape[2:])
    assert out.shape == x.shape
    assert torch.equal(out, torch.round(x - _medians(eb, x.dim())) + _medians(eb, x.dim()))


def test_factorized_stream_is_compressai_stream() -> None:
    """For enough symbols the bytes are exactly EntropyBottleneck.compress's."""
    eb = _bottleneck(4)
    x = torch.randn(1, 4, 8, 12, generator=_gen(6)) * 3
    assert 4 * 8 * 12 >= MIN_CODED_SYMBOLS
    data = compress_factorized(eb, x)
    assert data == eb.compress(x)[0]
    assert torch.equal(decompress_factorized(eb, data, (8, 12)), eb.decompress([data], (8, 12)))


def test_token_sequence_roundtrip(trained: EntropyBottleneck) -> None:
    """A (n_tokens, dim) embedding coded as (1, dim, n_tokens)."""
    emb = torch.randn(7, 4, generator=_gen(7)) * 2
    x = emb.t().unsqueeze(0)
    data = compress_factorized(trained, x)
    out = decompress_factorized(trained, data, (7,))
    assert torch.equal(out[0].t(), torch.round(emb - _medians(trained, 3)[0, :, 0]) + _medians(trained, 3)[0, :, 0])


@pytest.mark.parametrize("shape", [(1, 8, 5, 7), (10,), (2, 3, 4), (1,)])
@pytest.mark.parametrize("with_means", [False, True])
def test_gaussian_roundtrip(shape: tuple[int, ...], with_means: bool) -> None:
    gc = GaussianConditional(None)
    update_tables(gc)
    g = _gen(len(shape) + 10 * with_means)
    scales = torch.rand(*shape, generator=g) * 8
    means = torch.randn(*shape, generator=g) * 3 if with_means else None
    y = torch.randn(*shape, generator=g) * scales + (means if means is not None else 0)
    data = compress_gaussian(gc, y, scales, means)
    out = decompress_gaussian(gc, data, scales, means)
    expect = torch.round(y - means) + means if means is not None else torch.round(y)
    assert out.shape == y.shape and torch.equal(out, expect)
    if y.numel() >= MIN_CODED_SYMBOLS:
        idx = gc.build_indexes(scales)
        assert data == gc.compress(y.unsqueeze(0), idx.unsqueeze(0), None if means is None else means.unsqueeze(0))[0]


def test_gaussian_broadcast_means() -> None:
    gc = GaussianConditional(None)
    update_tables(gc)
    y = torch.randn(1, 3, 4, 4, generator=_gen(8)) * 2
    scales = torch.full_like(y, 2.0)
    means = torch.tensor([0.3, -1.2, 5.0]).view(1, 3, 1, 1)
    out = decompress_gaussian(gc, compress_gaussian(gc, y, scales, means), scales, means)
    assert torch.equal(out, torch.round(y - means) + means)


def test_values_outside_the_table() -> None:
    eb = _bottleneck(1)
    x = torch.tensor([[[1e4, -3e3, 0.0, 250.0] * 5]])  # bypass-coded symbols
    assert torch.equal(decompress_factorized(eb, compress_factorized(eb, x), (20,)), torch.round(x))
    with pytest.raises(ParameterError, match="scale"):
        compress_factorized(eb, torch.full((1, 1, 50), 1e9))
    with pytest.raises(ParameterError, match="32-bit"):
        compress_factorized(eb, torch.full((1, 1, 1000), 1e7))  # would overflow CompressAI's buffer


def test_bad_arguments() -> None:
    eb = _bottleneck(2)
    with pytest.raises(ParameterError, match="channels"):
        compress_factorized(eb, torch.zeros(1, 3, 4))
    with pytest.raises(ParameterError, match="one item"):
        compress_factorized(eb, torch.zeros(2, 2, 4))
    with pytest.raises(ParameterError, match="NaN"):
        compress_factorized(eb, torch.tensor([[[float("nan")], [0.0]]]))
    gc = GaussianConditional(None)
    update_tables(gc)
    with pytest.raises(ParameterError, match="match"):
        compress_gaussian(gc, torch.zeros(4), torch.ones(5))
    with pytest.raises(ParameterError, match="bytes"):
        decompress_gaussian(gc, "text", torch.ones(4))  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [0, 1, 5, 40, 300])
def test_stream_in_passes_is_one_gaussian_stream(n: int) -> None:
    """Symbols added in passes (a context model's order) make the stream of one compress_gaussian call
    over them in that order, and the decoder reads the passes back with the same scales and means."""
    gc = GaussianConditional(None)
    update_tables(gc)
    g = _gen(n)
    y, scales, means = torch.randn(n, generator=g) * 6, torch.rand(n, generator=g) * 5 + 0.05, torch.randn(n, generator=g)
    cut = n // 3
    enc = GaussianStreamEncoder(gc)
    first = enc.add(y[:cut], scales[:cut], means[:cut])
    second = enc.add(y[cut:], scales[cut:], means[cut:])
    assert enc.count == n
    data = enc.finish()
    assert data == compress_gaussian(gc, y, scales, means)
    assert torch.equal(torch.cat([first, second]), torch.round(y - means) + means)
    dec = GaussianStreamDecoder(gc, data, n)
    assert torch.equal(dec.read(scales[:cut], means[:cut]), first)
    assert torch.equal(dec.read(scales[cut:], means[cut:]), second)
    with pytest.raises(ParameterError, match="pass the stream"):
        dec.read(torch.ones(1), torch.zeros(1))


def test_stream_refuses_impossible_symbols() -> None:
    """A decoded symbol no encoder writes (beyond MAX_ABS_SYMBOL, written here by CompressAI's raw
    coder) is a corrupt stream, not data; random bytes decode to finite values."""
    from compressai.ans import RansEncoder

    gc = GaussianConditional(None)
    update_tables(gc)
    with pytest.raises(ParameterError, match="one shape"):
        GaussianStreamEncoder(gc).add(torch.zeros(3), torch.ones(3), torch.zeros(2))
    scales, means = torch.full((20,), 0.2), torch.zeros(20)
    idx = [int(i) for i in gc.build_indexes(scales)]
    cdf, lengths, offsets = gc._quantized_cdf.tolist(), gc._cdf_length.tolist(), gc._offset.tolist()
    data = bytes(RansEncoder().encode_with_indexes([2**25] + [0] * 19, idx, cdf, lengths, offsets))
    with pytest.raises(BitstreamError, match="corrupt"):
        GaussianStreamDecoder(gc, data, 20).read(scales, means)
    for seed in range(10):
        data = bytes(torch.randint(0, 256, (24,), generator=_gen(seed)).tolist())
        assert bool(torch.isfinite(GaussianStreamDecoder(gc, data, 20).read(scales, means)).all())


# --------------------------------------------------------------------------- rates


def test_factorized_estimate_matches_bytes(trained: EntropyBottleneck) -> None:
    dist = torch.distributions.Laplace(0.0, torch.tensor([0.5, 1.0, 2.0, 4.0]))
    torch.manual_seed(11)
    x = dist.sample(torch.Size([64, 64])).permute(2, 0, 1).unsqueeze(0)
    est = estimate_bits_factorized(trained, x)
    actual = 8 * len(compress_factorized(trained, x))
    assert abs(actual - est) <= 0.02 * est + 32 * 8, (est, actual)  # measured: +0.2 .. +0.4 %
    assert 1.0 < est / x.numel() < 5.0  # a plausible rate for these scales


def test_gaussian_estimate_matches_bytes() -> None:
    gc = GaussianConditional(None)
    update_tables(gc)
    g = _gen(12)
    scales = torch.exp(torch.rand(1, 8, 32, 32, generator=g) * 4 - 1)  # 0.37 .. 20
    means = torch.randn(1, 8, 32, 32, generator=g)
    y = torch.randn(1, 8, 32, 32, generator=g) * scales + means
    est = estimate_bits_gaussian(gc, y, scales, means)
    actual = 8 * len(compress_gaussian(gc, y, scales, means))
    assert abs(actual - est) <= 0.02 * est + 32 * 8, (est, actual)  # measured: +0.2 .. +0.4 %


def test_bin_probabilities_are_the_factorized_model_per_bin(trained: EntropyBottleneck) -> None:
    """Around each channel's median the bins' probabilities sum to about one, and they are the likelihoods
    the model gives rounded values (what the tables are built from)."""
    values = torch.arange(-60.0, 61.0)
    p = bin_probabilities(trained, values)
    assert p.shape == (4, len(values)) and not p.requires_grad
    assert torch.allclose(p.sum(dim=1), torch.ones(4), atol=1e-3)
    x = torch.tensor([-3.0, 0.0, 2.0]).reshape(1, 1, 3).expand(1, 4, 3)
    with torch.no_grad():
        _, lik = trained(x, training=False)
    med = trained.quantiles.detach()[:, 0, 1]
    for c in range(4):
        rounded = torch.round(x[0, c] - med[c]) + med[c]
        assert torch.allclose(bin_probabilities(trained, rounded)[c], lik[0, c], rtol=1e-5, atol=1e-9)


def test_scale_indexes_are_compressais_table_indexes() -> None:
    gc = GaussianConditional(None)
    update_tables(gc)
    scales = torch.exp(torch.empty(1000).uniform_(-4, 7, generator=_gen(3)))
    assert torch.equal(scale_indexes(gc, scales), gc.build_indexes(scales).to(torch.int64))


# --------------------------------------------------------------------------- other processes


def _run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_decode_in_fresh_process_is_bit_exact(tmp_path: Path, trained: EntropyBottleneck) -> None:
    model = nn.ModuleDict({"eb": copy.deepcopy(trained), "gc": GaussianConditional(None)})
    update_tables(model["gc"])
    g = _gen(13)
    z = torch.randn(1, 4, 6, 9, generator=g) * 3
    scales = torch.rand(1, 8, 12, 18, generator=g) * 5
    means = torch.randn(1, 8, 12, 18, generator=g)
    y = torch.randn(1, 8, 12, 18, generator=g) * scales + means
    payload = {
        "state": {"codec." + k: v for k, v in model.state_dict().items()},
        "z": compress_factorized(model["eb"], z),
        "y": compress_gaussian(model["gc"], y, scales, means),
        "scales": scales,
        "means": means,
    }
    torch.save(payload, tmp_path / "in.pt")
    proc = _run_python(
        f"""
        import torch
        from torch import nn
        from compressai.entropy_models import EntropyBottleneck, GaussianConditional
        from egc_lite.coding.entropy import fit_table_buffers
        from egc_lite.coding.range_coding import decompress_factorized, decompress_gaussian
        p = torch.load({str(tmp_path / "in.pt")!r})
        model = nn.ModuleDict({{"eb": EntropyBottleneck(4), "gc": GaussianConditional(None)}})
        state = {{k[len("codec."):]: v for k, v in p["state"].items()}}
        fit_table_buffers(model, p["state"], prefix="codec.")
        model.load_state_dict(state)
        z = decompress_factorized(model["eb"], p["z"], (6, 9))
        y = decompress_gaussian(model["gc"], p["y"], p["scales"], p["means"])
        torch.save({{"z": z, "y": y}}, {str(tmp_path / "out.pt")!r})
        """
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt")
    assert torch.equal(out["z"], torch.round(z - _medians(trained, 4)) + _medians(trained, 4))
    assert torch.equal(out["y"], torch.round(y - means) + means)


def test_garbage_and_tiny_streams_do_not_crash() -> None:
    """Decoding random, truncated or empty bytes returns finite values; 1-symbol streams work.

    Runs in a subprocess: CompressAI's C++ coder would kill the interpreter on a buffer
    overrun, which must show up as a failed test, not a crashed test run.
    """
    proc = _run_python(
        """
        import random, torch
        from compressai.entropy_models import EntropyBottleneck, GaussianConditional
        from egc_lite.coding.entropy import *
        from egc_lite.coding.range_coding import *
        torch.manual_seed(0)
        eb = EntropyBottleneck(4); update_tables(eb)
        gc = GaussianConditional(None); update_tables(gc)
        for n in range(0, 20):  # CompressAI alone crashes on one symbol
            x = torch.randn(1, 1, n) * 3
            eb1 = EntropyBottleneck(1); update_tables(eb1)
            m = eb1.quantiles.detach()[0, 0, 1]
            assert torch.equal(decompress_factorized(eb1, compress_factorized(eb1, x), (n,)), torch.round(x - m) + m)
            assert torch.equal(decompress_gaussian(gc, compress_gaussian(gc, x, x.abs() + 0.5), x.abs() + 0.5), x.round())
        rng = random.Random(0)
        good = compress_factorized(eb, torch.randn(1, 4, 8, 8) * 4)
        cases = [b"", b"\\x00", b"\\xff" * 3, b"\\xff" * 1000, b"\\x00" * 64, good[: len(good) // 2], good[:-1], good[1:]]
        cases += [bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 4, 8, 9, 33, 300]))) for _ in range(60)]
        for i, data in enumerate(cases):
            d = decompress_factorized(eb, data, rng.choice([(8, 8), (1,), (0,), (500,)]))
            assert torch.isfinite(d).all()
            s = torch.rand(rng.choice([1, 64, 500])) * rng.choice([0.1, 5.0, 300.0])
            assert torch.isfinite(decompress_gaussian(gc, data, s)).all()
        print("ok", len(cases))
        """
    )
    assert proc.returncode == 0, f"rc={proc.returncode} {proc.stderr[-3000:]}"
    assert proc.stdout.startswith("ok")
