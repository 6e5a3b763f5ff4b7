"""``egc eval``: rows from real files, resumable, failures recorded, summary, plots, FID/KID maths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from egc_lite.cli import main
from egc_lite.data import save_image
from egc_lite.errors import ParameterError
from egc_lite.evaluate.distribution import distribution_metrics, frechet_distance, hific_patches, kernel_inception_distance
from egc_lite.evaluate.runner import CodecOverrides, EvalConfig, run_eval
from egc_lite.evaluate.store import RecordStore
from egc_lite.evaluate.summary import markdown_summary, markdown_table, print_table, summary_frame


@pytest.fixture
def image_dir(tmp_path, smooth_image):
    folder = tmp_path / "images"
    for i in range(2):
        save_image(smooth_image(64, 96, grid=(8, 12), seed=10 + i), folder / f"img{i}.png")
    return folder


def test_store_resumes_last_record_wins_and_ignores_a_cut_line(tmp_path):
    s = RecordStore(tmp_path)
    s.add({"key": "a", "status": "failed", "error": "boom"})
    s.add({"key": "b", "status": "ok", "x": float("nan")})
    s.add({"key": "a", "status": "ok", "x": 1.0})
    with open(s.path, "a") as fh:
        fh.write('{"key": "c", "sta')  # a crash in the middle of a line
    again = RecordStore(tmp_path)
    assert len(again) == 2 and again.is_done("a") and again.get("b")["x"] == "nan"
    with pytest.raises(ValueError):
        again.add({"key": "d"})
    csv, js = again.write_tables("t")
    assert csv.read_text().count("\n") == 3 and len(json.loads(js.read_text())) == 2


def test_eval_rows_from_files_then_resume(image_dir, tmp_path):
    cfg = EvalConfig(out=tmp_path / "run", codecs=("guide", "webp", "jpg"), bpp=(0.3,), quality=(20,), images=image_dir)
    r = run_eval(cfg)
    assert (r.ran, r.skipped, r.failed) == (12, 0, 0)
    rows = json.loads((cfg.out / "results.json").read_text())
    assert {row["codec"] for row in rows} == {"guide", "webp", "jpeg"}
    for row in rows:
        size = (cfg.out / row["file"]).stat().st_size
        assert row["bpp"] == pytest.approx(8 * size / (64 * 96))  # the rate is the file's
        assert row["psnr"] > 15 and 0 < row["ms_ssim"] <= 1 and row["lf_psnr"] > row["psnr"] - 1
        assert row["sharpness"] > 0 and row["enc_s"] >= 0 and row["dec_s"] >= 0 and row["peak_mem_mb"] > 10
        for m in ("lpips", "dists"):  # no weights here: a word, never a number
            assert row[m] == "unavailable" or isinstance(row[m], float)
        if row["setting"] == "bpp=0.3":
            assert row["reached"] == (row["bpp"] <= 0.3)
        else:
            assert row["reached"] is None and row["quality"] == 20
    summary = (cfg.out / "summary.md").read_text()
    assert "| webp | q=20 | 2 |" in summary
    assert (cfg.out / "figures" / "rd.png").stat().st_size > 1000
    again = run_eval(cfg)  # resumable: nothing runs twice
    assert (again.ran, again.skipped) == (0, 12)
    more = run_eval(EvalConfig(out=cfg.out, codecs=("webp",), bpp=(0.5,), images=image_dir))
    assert more.ran == 2 and len(RecordStore(cfg.out)) == 14  # runs add up to one table


def test_failed_rows_are_recorded_and_retried(image_dir, tmp_path, monkeypatch):
    from egc_lite.evaluate import runner

    calls = {"n": 0}
    real = runner._run_classic

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("out of memory")
        return real(*a, **k)

    monkeypatch.setattr(runner, "_run_classic", flaky)
    cfg = EvalConfig(out=tmp_path / "run", codecs=("webp",), bpp=(0.3,), images=image_dir)
    r = run_eval(cfg)
    assert r.failed == 1 and r.ran == 1
    failed = RecordStore(cfg.out).records("failed")
    assert failed[0]["error"] == "RuntimeError: out of memory" and "1 failed rows" in r.summary
    r2 = run_eval(cfg)
    assert (r2.ran, r2.skipped, r2.failed) == (1, 1, 0) and not RecordStore(cfg.out).records("failed")


def test_generative_codec_with_overrides(image_dir, tmp_path, monkeypatch):
    ov = CodecOverrides(steps=2, inversion_steps=2, sc=0.0)
    cfg = EvalConfig(out=tmp_path / "run", codecs=("textinv",), bpp=(0.5,), images=image_dir, limit=1,
                     backbone="tiny-random", device="cpu", overrides=ov, save_recon=True)
    r = run_eval(cfg)
    assert r.failed == 0 and r.ran == 1
    row = RecordStore(cfg.out).records()[0]
    assert row["codec"] == "textinv sc=0 steps=2 inv=2" and row["file"].endswith(".egc")
    assert row["params"]["steps"] == 2
    assert (cfg.out / "recon" / "textinv_sc=0_steps=2_inv=2" / "bpp=0.5" / "img0.png").is_file()
    # codec B's sampler options name its rows too (textinv does not read them)
    diffeic = CodecOverrides(steps=10, start_step=0, eta=1.0)
    assert diffeic.label("diffeic") == "steps=10 start=0 eta=1" and diffeic.label("textinv") == "steps=10"


@pytest.mark.parametrize("kwargs, message", [
    (dict(codecs=("zip",), bpp=(0.1,)), "unknown codec"),
    (dict(codecs=("webp",)), "at least one rate"),
    (dict(codecs=("webp",), bpp=(-1.0,)), "--bpp"),
    (dict(codecs=("diffeic",), quality=(7,)), "out of range for diffeic"),
    (dict(codecs=("jpeg",), quality=(101,)), "out of range for jpeg"),
])
def test_mistakes_raise_before_anything_runs(tmp_path, image_dir, kwargs, message):
    with pytest.raises(ParameterError, match=message):
        run_eval(EvalConfig(out=tmp_path / "run", images=image_dir, **kwargs))
    assert not (tmp_path / "run").exists()


def test_cli_eval(image_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["eval", "--codecs", "webp", "--bpp", "0.4", "--images", str(image_dir), "--out", str(out)]) == 0
    assert "2 rows run" in capsys.readouterr().out
    assert main(["eval", "--codecs", "webp", "--images", str(image_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("egc: error:") and err.count("\n") == 1


def test_summary_means_and_unavailable():
    rows = [dict(key=f"{i}", status="ok", image=f"i{i}", codec="c", setting="bpp=0.1", bpp=0.1 * (i + 1), psnr=20.0 + i,
                 ms_ssim=0.8, lf_psnr=30.0, sharpness=0.5, lpips="unavailable", dists="unavailable", enc_s=1.0,
                 dec_s=2.0, peak_mem_mb=100.0 + i, reached=i == 0) for i in range(2)]
    s = summary_frame(rows)
    assert len(s) == 1 and s.loc[0, "psnr"] == 20.5 and s.loc[0, "peak_mem_mb"] == 101 and s.loc[0, "reached"] == "1/2"
    md = markdown_summary(rows, {"lpips": "unavailable: no weights"})
    assert "| c | bpp=0.1 | 2 | 0.1500 | 20.50 |" in md and "| unavailable | unavailable |" in md
    assert "- lpips: unavailable: no weights" in md


def test_one_table_printer_for_eval_and_the_benchmarks(capsys):
    """The benchmarks' tables (and ``egc eval``'s summary) are Markdown; a row is printed as soon as it is measured."""
    before_second = []

    def rows():
        yield ["case 0", 0.0]
        before_second.append(capsys.readouterr().out)
        yield ["case 1", 1 / 3]

    print_table(["case", "value"], rows())
    assert before_second == ["| case | value |\n|---|---|\n| case 0 | 0.0 |\n"]
    assert capsys.readouterr().out == "| case 1 | 0.3333333333333333 |\n"
    assert markdown_table(["a"], [[1]]) == "| a |\n|---|\n| 1 |"


def test_hific_patches_and_distances():
    x = torch.rand(3, 512, 768)
    p = hific_patches(x)
    assert p.shape == (6 + 2, 3, 256, 256)  # the 256-grid, then the grid shifted by 128
    assert torch.equal(p[6], x[:, 128:384, 128:384])
    with pytest.raises(ParameterError):
        hific_patches(torch.rand(3, 100, 300))
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(a, b + 2.0) > frechet_distance(a, b) + 20  # a shift of 2 in 8 dims adds about 32
    assert abs(kernel_inception_distance(a, b, subsets=5, subset_size=100)) < 0.05
    assert kernel_inception_distance(a, b + 2.0, subsets=5, subset_size=100) > 0.5


def test_fid_is_unavailable_without_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    out = distribution_metrics([torch.rand(3, 256, 256)], [torch.rand(3, 256, 256)])
    assert out["fid"] == "unavailable" and out["kid"] == "unavailable" and "weights not found" in out["reason"]
