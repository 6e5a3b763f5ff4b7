"""Training of a DiffEIC rate point: resume, export, fine-tuning from another point, fp16 and bf16, the
export's destination, the Accelerator before the backbone."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from egc_lite.errors import ModelNotFoundError, ParameterError
from egc_lite.models.diffeic.config import DiffEICConfig
from egc_lite.models.diffeic.model import DiffEICModel, load_diffeic
from egc_lite.training.diffeic import DiffEICTrainConfig, export_diffeic, train_diffeic


def test_train_resume_export_load_and_decode(tmp_path, photo_folder, tiny_backbone):
    from egc_lite.cli import main
    from egc_lite.codecs import CompressOptions
    from egc_lite.codecs.diffeic import DiffEICCodec

    photos = photo_folder
    ckpt = tmp_path / "ckpt"
    common = dict(ckpt_dir=str(ckpt), data_dir=str(photos), model=DiffEICConfig(N=8, M=8, lmbda=1.0), batch_size=2,
                  crop=64, log_every=1, save_every=1)
    before = {k: v.clone() for k, v in tiny_backbone.unet.state_dict().items()}
    train_diffeic(DiffEICTrainConfig(steps=2, **common), tiny_backbone)
    assert torch.load(ckpt / "diffeic.pt", weights_only=False)["step"] == 2
    train_diffeic(DiffEICTrainConfig(steps=3, **common), tiny_backbone)  # resumes from step 2
    assert torch.load(ckpt / "diffeic.pt", weights_only=False)["step"] == 3
    log = [json.loads(line) for line in (ckpt / "diffeic_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(r["bpp"] > 0 and r["mse"] > 0 and r["align"] >= 0 and "aux" in r for r in log)
    assert all(torch.equal(before[k], v) for k, v in tiny_backbone.unet.state_dict().items())  # backbone frozen
    assert main(["train", "diffeic-export", "--ckpt", str(ckpt), "--out", str(tmp_path / "q1")]) == 0
    training = json.loads((tmp_path / "q1" / "config.json").read_text())["training"]
    assert training["steps"] == 3 and training["minutes"] >= 0 and set(training["final_losses"]) >= {"loss", "bpp", "mse", "align"}
    loaded = load_diffeic(tmp_path / "q1", tiny_backbone)
    codec = DiffEICCodec(tiny_backbone, model=loaded)
    x = torch.rand(3, 64, 64)
    bs = codec.compress(x, CompressOptions(steps=2))
    y = codec.decompress(bs)
    assert y.shape == (3, 64, 64) and bool(torch.isfinite(y).all())
    assert main(["train", "diffeic-export", "--ckpt", str(ckpt)]) == 2  # neither --out nor --quality
    with pytest.raises(ModelNotFoundError, match="checkpoint"):
        export_diffeic(tmp_path / "none", tmp_path / "out")


def test_init_from_another_rate_point(tmp_path, photo_folder, tiny_backbone):
    photos = photo_folder
    common = dict(data_dir=str(photos), batch_size=2, crop=64, steps=1, log_every=1)
    src = tmp_path / "lambda1"
    train_diffeic(DiffEICTrainConfig(ckpt_dir=str(src), model=DiffEICConfig(N=8, M=8, lmbda=1.0), **common), tiny_backbone)
    dst = tmp_path / "lambda8"
    cfg = DiffEICTrainConfig(ckpt_dir=str(dst), model=DiffEICConfig(N=8, M=8, lmbda=8.0), init_from=str(src), **common)
    train_diffeic(replace(cfg, steps=0), tiny_backbone)  # zero steps: the source's weights under the new lambda
    a, b = (torch.load(p / "diffeic.pt", weights_only=False) for p in (src, dst))
    assert b["step"] == 0 and b["config"]["model"]["lmbda"] == 8.0
    assert all(torch.equal(a["model"][k], v) for k, v in b["model"].items())
    wider = DiffEICTrainConfig(ckpt_dir=str(tmp_path / "wider"), model=DiffEICConfig(N=8, M=16, lmbda=8.0), init_from=str(src), **common)
    with pytest.raises(ParameterError, match="only lmbda may differ"):
        train_diffeic(wider, tiny_backbone)
    with pytest.raises(ModelNotFoundError, match="no DiffEIC checkpoint"):
        train_diffeic(DiffEICTrainConfig(ckpt_dir=str(tmp_path / "x"), model=DiffEICConfig(N=8, M=8), init_from=str(tmp_path / "none"), **common), tiny_backbone)
    # a rate point carries over to a retrained backbone of the same architecture, not to another one
    retrained = dict(a, backbone_id="retrained")
    torch.save(retrained, tmp_path / "retrained.pt")
    moved = train_diffeic(replace(cfg, ckpt_dir=str(tmp_path / "moved"), init_from=str(tmp_path / "retrained.pt"), steps=0), tiny_backbone)
    moved_state = torch.load(moved, weights_only=False)
    assert moved_state["backbone_id"] == tiny_backbone.backbone_id
    assert all(torch.equal(a["model"][k], v) for k, v in moved_state["model"].items())
    torch.save(dict(a, unet={**a["unet"], "block_out_channels": [64, 128]}), tmp_path / "other_arch.pt")
    with pytest.raises(ParameterError, match="another UNet or VAE architecture"):
        train_diffeic(replace(cfg, ckpt_dir=str(tmp_path / "y"), init_from=str(tmp_path / "other_arch.pt")), tiny_backbone)


def test_a_float16_unet_trains_with_loss_scaling(tmp_path, photo_folder, tiny_backbone):
    """Issue 11, fault 6: the control module learns through a float16 UNet even where its gradients
    are below float16's smallest number (they would flush to zero without loss scaling)."""
    import copy

    from egc_lite.precision import training_precision

    backbone = copy.deepcopy(tiny_backbone)
    backbone.unet.half()
    with torch.no_grad():  # a UNet whose output is tiny: every gradient behind it is below 6e-8 in float16
        backbone.unet.conv_out.weight.mul_(1e-4)
        backbone.unet.conv_norm_out.weight.mul_(1e-3)
        backbone.unet.conv_norm_out.bias.mul_(1e-3)
    assert training_precision("cpu", torch.float16) == "fp16" and training_precision("cpu", torch.float32, "fp32") == "fp32"
    photos = photo_folder
    ckpt = tmp_path / "ckpt"
    train_diffeic(DiffEICTrainConfig(ckpt_dir=str(ckpt), data_dir=str(photos), model=DiffEICConfig(N=8, M=8, lmbda=1.0),
                                     batch_size=2, crop=64, steps=2, lr=1e-3, log_every=1, save_every=1), backbone)
    trained = DiffEICModel.for_backbone(DiffEICConfig(N=8, M=8, lmbda=1.0), backbone)
    trained.load_state_dict(torch.load(ckpt / "diffeic.pt", weights_only=False)["model"])
    projections = [m.weight for m in trained.control.output_projections()]
    assert projections and any(bool(w.abs().sum() > 0) for w in projections)  # the zero-initialised projections moved
    assert next(backbone.unet.parameters()).dtype == torch.float16  # the frozen UNet stays as loaded


def test_bf16_training_keeps_the_rate_in_float32(tmp_path, photo_folder, tiny_backbone):
    photos = photo_folder
    ckpt = tmp_path / "ckpt"
    train_diffeic(DiffEICTrainConfig(ckpt_dir=str(ckpt), data_dir=str(photos), model=DiffEICConfig(N=8, M=8, lmbda=1.0),
                                     batch_size=2, crop=64, steps=1, log_every=1, precision="bf16"), tiny_backbone)
    log = [json.loads(line) for line in (ckpt / "diffeic_log.jsonl").read_text().splitlines()]
    assert log[0]["bpp"] > 0 and log[0]["mse"] > 0


def test_export_by_quality_leaves_the_shipped_rate_points_alone(tmp_path, photo_folder, tiny_backbone, monkeypatch):
    """Fault 5: `egc train diffeic-export --quality N` overwrote the package's weights/diffeic/qN (egc-tiny's
    shipped points, whatever backbone the checkpoint was trained on); it now writes <root>/<backbone id>/qN."""
    import hashlib

    import egc_lite.weights as weights
    from egc_lite.cli import main

    monkeypatch.setenv("EGC_DIFFEIC_WEIGHTS", str(tmp_path / "points"))
    # a stand-in for the package's shipped points, so that a regression overwrites nothing in the checkout
    DIFFEIC_WEIGHTS = tmp_path / "shipped"
    for q in (1, 3, 5):
        (DIFFEIC_WEIGHTS / f"q{q}").mkdir(parents=True)
        (DIFFEIC_WEIGHTS / f"q{q}" / "config.json").write_text('{"backbone_id": "shipped"}')
        (DIFFEIC_WEIGHTS / f"q{q}" / "model.safetensors").write_bytes(b"shipped weights")
    monkeypatch.setattr(weights, "DIFFEIC_DIR", DIFFEIC_WEIGHTS)
    ckpt = tmp_path / "ckpt"
    train_diffeic(DiffEICTrainConfig(ckpt_dir=str(ckpt), data_dir=str(photo_folder),
                                     model=DiffEICConfig(N=8, M=8, lmbda=4.0), steps=1, batch_size=1, crop=64), tiny_backbone)

    def shipped() -> dict:
        return {str(p.relative_to(DIFFEIC_WEIGHTS)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(DIFFEIC_WEIGHTS.rglob("*")) if p.is_file()}

    before = shipped()
    assert main(["train", "diffeic-export", "--ckpt", str(ckpt), "--quality", "3"]) == 0
    assert shipped() == before
    assert (tmp_path / "points" / tiny_backbone.backbone_id / "q3" / "config.json").is_file()


def test_training_creates_the_accelerator_before_it_loads_the_backbone(tmp_path, monkeypatch):
    """Fault 7: the backbone was loaded (on `cuda`, i.e. cuda:0 on every rank) before the Accelerator existed;
    now the Accelerator comes first and the backbone is loaded on its device (this rank's GPU)."""
    import accelerate

    import egc_lite.backbone as backbone_module
    from egc_lite.cli import main

    events = []

    class Stop(Exception):
        pass

    class FakeAccelerator:
        device = torch.device("cpu")  # stands for this rank's device
        process_index = 0

        def __init__(self, *args, **kwargs):
            events.append("accelerator")

    def fake_load(spec, device="auto", dtype=None):
        events.append(("load", str(device)))
        raise Stop

    monkeypatch.setattr(accelerate, "Accelerator", FakeAccelerator)
    monkeypatch.setattr(backbone_module, "load_backbone", fake_load)
    with pytest.raises(Stop):
        main(["train", "diffeic", "--lmbda", "1", "--backbone", "tiny-random", "--ckpt", str(tmp_path / "ckpt"),
              "--data", str(tmp_path), "--steps", "1"])
    assert events == ["accelerator", ("load", "cpu")]


def test_load_or_train_uses_fitting_shipped_points_else_trains_one(tmp_path, photo_folder, tiny_backbone, monkeypatch, capsys):
    """Notebooks 03 and 04: the shipped rate points that load for the backbone; none fit the tiny random
    backbone, so one is trained here (quality 0), in ckpt_dir, and a second call resumes it."""
    from egc_lite.training.diffeic import load_or_train_rate_points

    monkeypatch.setenv("EGC_TRAIN_DATA", str(photo_folder))
    with pytest.raises(ValueError, match="rate_points"):
        load_or_train_rate_points(tiny_backbone, "both")
    kw = dict(ckpt_dir=tmp_path / "ckpt", steps=1, batch_size=1, crop=64, lmbda=2.0)
    points = load_or_train_rate_points(tiny_backbone, "shipped", **kw)
    out = capsys.readouterr().out
    assert "no shipped DiffEIC rate point" in out and "trained for 1 steps" in out
    assert points.qualities == [0] and points.main == 0 and points.trained_here
    assert points.label(0) == "trained here (1 steps, lambda 2)" and points.label(3) == "q3 (lambda 0.25)"  # the shipped q3 was trained with lambda 0.25
    assert points.codec.model(0) is not None
    again = load_or_train_rate_points(tiny_backbone, "train", **kw)
    assert "continued from the checkpoint already in" in capsys.readouterr().out and again.trained_steps == 1


def test_the_command_line_trains_the_shipped_design_by_default():
    """`egc train diffeic` with no compressor options trains what ships (SHIPPED_DESIGN: the reference's CDDM
    control, SFT modulation and checkerboard context, as every shipped config.json says), and a config.json
    without these fields stays the old design."""
    import json

    from egc_lite.cli import build_parser
    from egc_lite.models.diffeic.config import LEGACY_FIELDS, SHIPPED_DESIGN, DiffEICConfig
    from egc_lite.weights import DIFFEIC_DIR

    args = build_parser().parse_args(["train", "diffeic", "--lmbda", "1"])
    assert {k: getattr(args, k) for k in SHIPPED_DESIGN} == SHIPPED_DESIGN
    shipped = [json.loads(p.read_text())["config"] for p in sorted(DIFFEIC_DIR.glob("q*/config.json"))]
    assert shipped and all({k: cfg[k] for k in SHIPPED_DESIGN} == SHIPPED_DESIGN for cfg in shipped)
    old = DiffEICConfig.from_dict({"N": 8, "M": 8})
    assert all(getattr(old, k) == v for k, v in LEGACY_FIELDS.items())
    assert old.identity_dict() == {k: v for k, v in old.to_dict().items() if k not in LEGACY_FIELDS}
