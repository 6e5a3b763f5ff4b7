"""A DiffEIC rate point: its configuration (old ones included), its files, and the shipped rate points."""

from __future__ import annotations

import json

import pytest
import torch

from egc_lite.errors import ModelNotFoundError, ParameterError
from egc_lite.models.diffeic.config import LEGACY_FIELDS, DiffEICConfig
from egc_lite.models.diffeic.layers import HyperAnalysisSFT
from egc_lite.models.diffeic.model import load_compressor, load_diffeic, save_diffeic

from .conftest import LEGACY_CONFIG, SHIPPED, TINY, VARIANTS


def test_config_control_field_and_old_configurations():
    """New models default to the reference's control; a configuration saved before the field means the narrow one."""
    assert DiffEICConfig().control == "cddm"
    old = {k: v for k, v in DiffEICConfig(N=8, M=8).to_dict().items() if k != "control"}
    assert DiffEICConfig.from_dict(old).control == "narrow"
    assert DiffEICConfig.from_dict(DiffEICConfig(N=8, M=8).to_dict()).control == "cddm"
    with pytest.raises(ParameterError, match="control"):
        DiffEICConfig(control="xs").validate()


def test_save_load_round_trip(tmp_path, model, batch, tiny_backbone):
    x, z0 = batch
    folder = save_diffeic(model, tmp_path / "q", tiny_backbone.backbone_id)
    meta = json.loads((folder / "config.json").read_text())
    assert meta["backbone_id"] == tiny_backbone.backbone_id and meta["config"]["N"] == TINY.N
    assert meta["config"]["control"] == "cddm"
    loaded = load_diffeic(folder, tiny_backbone)
    assert loaded.fingerprint() == model.fingerprint() and loaded.config.control == "cddm"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    a = model.compressor.compress(x[:1], z0[:1])
    b = loaded.compressor.compress(x[:1], z0[:1])
    assert a["strings"] == b["strings"] and torch.equal(a["c"], b["c"])
    from egc_lite.backbone import tiny_random_backbone

    with pytest.raises(ModelNotFoundError, match="backbone"):
        load_diffeic(folder, tiny_random_backbone(seed=1))
    with pytest.raises(ModelNotFoundError, match="egc train diffeic"):
        load_diffeic(tmp_path / "nothing", tiny_backbone)


def test_a_config_saved_before_the_appended_fields_loads_as_the_old_design():
    """A config.json written before ``control``, ``z0_modulation`` and ``context`` existed loads as the design it
    was trained with, and hashes (``identity_dict``, what the fingerprint files store covers) exactly its old keys."""
    meta = json.loads(LEGACY_CONFIG.read_text())
    cfg = DiffEICConfig.from_dict(meta["config"])
    assert all(getattr(cfg, k) == v for k, v in LEGACY_FIELDS.items())
    assert cfg.identity_dict() == {k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()}


def test_shipped_rate_points_are_the_reference_design_and_code_exactly(smooth_image):
    """egc-tiny v3's q1, q3, q5: the reference's control and compressor (SFT, checkerboard context), rates
    ordered by lambda, and the compressor decodes its own symbols exactly."""
    lambdas = []
    for q in ("q1", "q3", "q5"):
        meta = json.loads((SHIPPED / q / "config.json").read_text())
        cfg = DiffEICConfig.from_dict(meta["config"])
        assert (cfg.control, cfg.z0_modulation, cfg.context) == ("cddm", "sft", "checkerboard")
        lambdas.append(cfg.lmbda)
    assert lambdas == sorted(lambdas, reverse=True)  # q1 is the lowest rate: the largest lambda
    comp = load_compressor(SHIPPED / "q1")
    assert comp.context is not None and comp.g_a_sft is not None and isinstance(comp.h_a, HyperAnalysisSFT)
    x = smooth_image(64, 128, seed=5, batch=1)
    out = comp.compress(x, torch.randn(1, 8, 8, 16, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(comp.decompress(out["strings"], out["shape"]), out["c"])


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_files_of_odd_sizes_survive_save_and_load(tmp_path, variants, tiny_backbone, smooth_image, name):
    from egc_lite.codecs import CompressOptions
    from egc_lite.codecs.diffeic import DiffEICCodec

    model = variants[name]
    folder = save_diffeic(model, tmp_path / "q", tiny_backbone.backbone_id)
    meta = json.loads((folder / "config.json").read_text())["config"]
    assert (meta["z0_modulation"], meta["context"], tuple(meta["context_slices"])) == (
        model.config.z0_modulation, model.config.context, model.config.context_slices)
    loaded = load_diffeic(folder, tiny_backbone)
    assert loaded.config == model.config and loaded.fingerprint() == model.fingerprint()
    x = smooth_image(70, 130, seed=3)
    bs = DiffEICCodec(tiny_backbone, model=model).compress(x, CompressOptions(steps=2))
    codec = DiffEICCodec(tiny_backbone, model=loaded)
    c = codec.content_variables(bs)
    assert c.shape == (1, 4, 16, 24)
    assert torch.equal(load_compressor(folder).decompress(bs.sections, (2, 3)), c)
    assert codec.decompress(bs).shape == (3, 70, 130)
