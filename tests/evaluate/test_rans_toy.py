"""Notebook 03's toy rANS coder: it round-trips, and at CompressAI's sizes it writes the package's bytes."""

from __future__ import annotations

import math
import random

import pytest
import torch

from egc_lite.coding.entropy import update_tables
from egc_lite.coding.range_coding import compress_gaussian
from egc_lite.evaluate.rans_toy import package_table, rans_decode, rans_encode, words_to_bytes


@pytest.mark.parametrize("sizes", [dict(precision=3, lower_bits=4, word_bits=4), dict(precision=16, lower_bits=31, word_bits=32),
                                   dict(precision=8, lower_bits=16, word_bits=8)])
def test_round_trip_and_length_near_information(sizes):
    rng = random.Random(0)
    M = 1 << sizes["precision"]
    freqs = [M // 2, M // 4, M // 8, M - M // 2 - M // 4 - M // 8]
    cdf = [0]
    for f in freqs:
        cdf.append(cdf[-1] + f)
    symbols = rng.choices(range(4), weights=freqs, k=500)
    words, steps = rans_encode(symbols, cdf, **sizes)
    assert rans_decode(words, len(symbols), cdf, **sizes) == symbols
    assert [s.symbol for s in steps] == symbols[::-1]  # the encoder codes last to first
    info = -sum(math.log2(freqs[s] / M) for s in symbols)
    bits = len(words) * sizes["word_bits"]
    # the stream pays the information, at most a word per renormalisation of slack and the final state
    assert info <= bits <= info + 2 * (sizes["lower_bits"] + sizes["word_bits"]) + sizes["word_bits"]


def test_toy_step_by_hand():
    words, steps = rans_encode([2], [0, 4, 6, 8], precision=3, lower_bits=4, word_bits=4)
    assert steps[0].state_before == 16 and steps[0].state_after == (16 // 2) * 8 + 16 % 2 + 6
    assert rans_decode(words, 1, [0, 4, 6, 8], precision=3, lower_bits=4, word_bits=4) == [2]


def test_same_bytes_as_the_package_coder():
    from compressai.entropy_models import GaussianConditional

    gc = GaussianConditional(None)
    update_tables(gc)
    g = torch.Generator().manual_seed(3)
    for sigma in (0.5, 1.5, 7.0):
        y = torch.round(sigma * torch.randn(1, 64, generator=g))
        cdf, offset = package_table(gc, sigma)
        sym = [int(v) - offset for v in y[0]]
        assert all(0 <= s < len(cdf) - 2 for s in sym), "test symbols must lie inside the table (no bypass)"
        words, _ = rans_encode(sym, cdf, precision=16)
        assert words_to_bytes(words) == compress_gaussian(gc, y, torch.full_like(y, sigma))


def test_bad_tables_are_refused():
    with pytest.raises(ValueError):
        rans_encode([0], [0, 3, 7], precision=3)  # does not end at 8
    with pytest.raises(ValueError):
        rans_encode([1], [0, 8, 8], precision=3)  # zero frequency
