"""How close the entropy coder's real output comes to the model's estimate, and how fast it is.

Trains a CompressAI ``EntropyBottleneck`` briefly on a few kinds of data, builds its tables
(``egc_lite.coding.entropy.update_tables``), then codes one fresh sample of each with
``compress_factorized`` / ``decompress_factorized`` and prints a table: symbols, bits the
model estimates, bits actually written (bytes * 8), overhead, and coding times. A
``GaussianConditional`` row with known scales and means is added for comparison, and two
short streams show the fixed cost of a small section.

Run: ``OMP_NUM_THREADS=1 python benchmarks/entropy_overhead.py [--steps 300]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck, GaussianConditional

from egc_lite.coding.entropy import estimate_bits_factorized, estimate_bits_gaussian, fit_factorized, update_tables
from egc_lite.coding.range_coding import compress_factorized, compress_gaussian, decompress_factorized, decompress_gaussian
from egc_lite.evaluate.summary import print_table

Sampler = Callable[[torch.Generator], torch.Tensor]


def gaussian(shape: tuple[int, ...], scales: list[float]) -> Sampler:
    s = torch.tensor(scales).view(1, -1, *([1] * (len(shape) - 2)))
    return lambda g: torch.randn(*shape, generator=g) * s


def laplacian(shape: tuple[int, ...], scales: list[float]) -> Sampler:
    s = torch.tensor(scales).view(1, -1, *([1] * (len(shape) - 2)))

    def sample(g: torch.Generator) -> torch.Tensor:
        u = torch.rand(*shape, generator=g) - 0.5
        return -torch.sign(u) * torch.log1p(-2 * u.abs()) * s

    return sample


def latent_like(shape: tuple[int, int, int, int], step: float = 0.25) -> Sampler:
    """A spatially correlated 4-channel field like an SD latent (std about 1, channel offsets),
    expressed in units of a quantization step of ``step`` (so values are divided by ``step``)."""
    _, c, h, w = shape
    offsets = torch.tensor([0.8, -0.4, 0.2, -0.6]).view(1, c, 1, 1)
    stds = torch.tensor([1.0, 0.8, 1.2, 0.9]).view(1, c, 1, 1)

    def sample(g: torch.Generator) -> torch.Tensor:
        coarse = torch.randn(1, c, h // 8, w // 8, generator=g)
        smooth = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
        fine = torch.randn(1, c, h, w, generator=g) * 0.5
        field = (0.9 * smooth + fine) * stds + offsets
        return field / step

    return sample


def train(channels: int, sample: Sampler, steps: int, seed: int = 0) -> EntropyBottleneck:
    return fit_factorized(EntropyBottleneck(channels), sample, steps, seed)


def timed(fn: Callable[[], object], repeat: int = 5) -> tuple[object, float]:
    out = fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return out, 1000 * statistics.median(times)


HEAD = ["data (shape)", "symbols", "est. bits", "real bits", "overhead", "bits/sym", "enc ms", "dec ms"]


def row(name: str, symbols: int, est: float, nbytes: int, t_enc: float, t_dec: float) -> list[str]:
    actual = 8 * nbytes
    over = 100 * (actual - est) / est if est > 0 else float("nan")
    return [name, str(symbols), f"{est:.0f}", str(actual), f"{over:+.2f}%", f"{actual / max(symbols, 1):.3f}", f"{t_enc:.2f}", f"{t_dec:.2f}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="training steps per entropy bottleneck")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print_table(HEAD, rows(args.steps))


def rows(steps: int) -> Iterator[list[str]]:
    """One row per case, measured when the table asks for it."""
    cases: list[tuple[str, tuple[int, ...], Sampler]] = [
        ("gaussian (1,8,32,32)", (1, 8, 32, 32), gaussian((1, 8, 32, 32), [0.3, 0.5, 1, 2, 3, 4, 6, 8])),
        ("laplacian (1,8,32,32)", (1, 8, 32, 32), laplacian((1, 8, 32, 32), [0.3, 0.5, 1, 2, 3, 4, 6, 8])),
        ("latent-like /0.25 (1,4,64,96)", (1, 4, 64, 96), latent_like((1, 4, 64, 96), 0.25)),
        ("latent-like /1.0 (1,4,64,96)", (1, 4, 64, 96), latent_like((1, 4, 64, 96), 1.0)),
        ("tokens laplace (1,64,4)", (1, 64, 4), laplacian((1, 64, 4), [2.0] * 64)),
    ]
    g_test = torch.Generator().manual_seed(1234)
    for name, shape, sample in cases:
        eb = train(shape[1], sample, steps)
        x = sample(g_test)
        est = estimate_bits_factorized(eb, x)
        data, t_enc = timed(lambda eb=eb, x=x: compress_factorized(eb, x))
        out, t_dec = timed(lambda eb=eb, data=data, shape=shape: decompress_factorized(eb, data, shape[2:]))
        m = eb.quantiles.detach()[:, 0, 1].view(1, -1, *([1] * (len(shape) - 2)))
        assert torch.equal(out, torch.round(x - m) + m)
        yield row(name, x.numel(), est, len(data), t_enc, t_dec)

    gc = GaussianConditional(None)
    update_tables(gc)
    g = torch.Generator().manual_seed(7)
    scales = torch.exp(torch.rand(1, 32, 32, 48, generator=g) * 4 - 1.5)
    means = torch.randn(1, 32, 32, 48, generator=g)
    y = torch.randn(1, 32, 32, 48, generator=g) * scales + means
    est = estimate_bits_gaussian(gc, y, scales, means)
    data, t_enc = timed(lambda: compress_gaussian(gc, y, scales, means))
    out, t_dec = timed(lambda: decompress_gaussian(gc, data, scales, means))
    assert torch.equal(out, torch.round(y - means) + means)
    yield row("gaussian cond. (1,32,32,48)", y.numel(), est, len(data), t_enc, t_dec)

    for n in (1, 16):
        eb = train(1, laplacian((1, 1, 64), [1.0]), 100)
        x = laplacian((1, 1, n), [1.0])(g_test)
        est = estimate_bits_factorized(eb, x)
        data, t_enc = timed(lambda eb=eb, x=x: compress_factorized(eb, x))
        out, t_dec = timed(lambda eb=eb, data=data, n=n: decompress_factorized(eb, data, (n,)))
        yield row(f"short stream laplace (1,1,{n})", n, est, len(data), t_enc, t_dec)


if __name__ == "__main__":
    main()
