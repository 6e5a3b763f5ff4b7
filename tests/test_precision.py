"""egc_lite.precision: bf16 only where it is fast, an override by environment, clear errors."""

from __future__ import annotations

import pytest
import torch

from egc_lite import precision
from egc_lite.errors import ParameterError
from egc_lite.precision import autocast, inference_precision, prepare_module, resolve_precision


def test_cpu_choice_follows_the_hardware_probe(monkeypatch):
    monkeypatch.delenv("EGC_PRECISION", raising=False)
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    assert resolve_precision("cpu") == "bf16"
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    assert resolve_precision("cpu") == "fp32"
    assert resolve_precision("cpu", "bf16") == "bf16"  # an explicit choice wins over the probe


def test_environment_overrides_and_bad_values_are_refused(monkeypatch):
    monkeypatch.setenv("EGC_PRECISION", "fp32")
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    assert resolve_precision("cpu", "bf16") == "fp32"
    monkeypatch.setenv("EGC_PRECISION", "half")
    with pytest.raises(ParameterError, match="EGC_PRECISION"):
        resolve_precision("cpu")
    monkeypatch.delenv("EGC_PRECISION")
    with pytest.raises(ParameterError, match="precision"):
        resolve_precision("cpu", "fp16")


def test_autocast_and_layout():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.rand(1, 3, 8, 8)
    with autocast("cpu", "bf16"):
        assert conv(x).dtype == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert conv(x).dtype == torch.float32
    assert prepare_module(conv, "bf16").weight.is_contiguous(memory_format=torch.channels_last)
    assert prepare_module(torch.nn.Conv2d(3, 4, 3), "fp32").weight.is_contiguous()


def test_inference_precision_is_bf16_only_for_float32_where_fast(monkeypatch):
    monkeypatch.delenv("EGC_PRECISION", raising=False)
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    assert inference_precision("cpu", torch.float32) == "bf16"
    assert inference_precision("cpu", torch.float32, "fp32") == "fp32"
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    assert inference_precision("cpu", torch.float32) == "fp32"  # emulated bf16 would be ~10x slower
    monkeypatch.setenv("EGC_PRECISION", "bf16")
    assert inference_precision("cpu", torch.float32) == "bf16"
    assert inference_precision("cpu", torch.float16) == "fp16"  # a float16 backbone runs as stored
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setenv("EGC_PRECISION", "fp32")
    assert inference_precision("cpu", torch.float32, "bf16") == "fp32"
    monkeypatch.delenv("EGC_PRECISION")
    with pytest.raises(ParameterError, match="precision"):
        inference_precision("cpu", torch.float16, "half")
