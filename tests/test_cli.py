"""The dfq-gpu command line: results, JSON, exit codes and one-line errors for bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dfq_gpu", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=900)


def run_here(capsys: pytest.CaptureFixture, *args: str) -> subprocess.CompletedProcess:
    """``dfq_gpu.cli.main(args)`` in this process (no interpreter start-up), as ``run`` reports it."""
    from dfq_gpu.cli import main

    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["dfq-gpu", *args], code, out.out, out.err)


def assert_user_error(p: subprocess.CompletedProcess, pattern: str) -> None:
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dfq-gpu: error: "), p.stderr
    assert "Traceback" not in p.stderr
    assert re.search(pattern, lines[0]), lines[0]


def _readme_row(name: str) -> list[str]:
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == name:
            return cells
    raise AssertionError(f"README has no table row {name!r}")


def test_quantize_then_eval_is_the_readme_recipe(tmp_path):
    """``dfq-gpu quantize`` then ``dfq-gpu eval`` measure what the README's DFQ row measures: the
    row's configuration through ``dfq_gpu.ablation.run_ablation`` on the same inputs (20 views here;
    ``tests/test_notebooks.py`` checks the row's numbers against the README on all 160), and the
    file the command wrote runs in int8."""
    out = tmp_path / "m.safetensors"
    p = run("quantize", "efficientnet_lite0", "--out", str(out), "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["out"] == str(out) and out.exists() and "equalized regions" in info["summary"]
    p = run("eval", str(out), "--data", "imagenet-sample", "--views", "1", "--batch-size", "8", "--json", "--quiet")
    assert p.returncode == 0, p.stderr
    m = json.loads(p.stdout)
    assert m["n"] == 20

    from dfq_gpu import ablation, data, zoo

    name = "W8A8 +CLE +absorption +bias corr. (DFQ)"
    assert _readme_row(name)[5] == "yes"  # data-free, as the command ran
    model, pre = zoo.load_model("efficientnet_lite0")
    row = next(r for r in ablation.ABLATION_ROWS if r.name == name)
    want = ablation.run_ablation(model, data.imagenet_sample(pre, views=1), rows=[row], input_range=pre.input_range,
                                 progress=False).rows[0]
    # the same numbers; thread counts can change float sums in the last bits
    assert m["sqnr_db"] == pytest.approx(want["sqnr_db"], abs=0.05), (m, want)
    assert abs(m["agreement"] - want["agreement"]) <= 0.051 and abs(m["top1"] - want["top1"]) <= 0.051, (m, want)
    assert m["agreement"] >= 0.9, m
    # the same file in int8 agrees with FP32 as the simulation does
    p = run("eval", str(out), "--data", "imagenet-sample", "--views", "1", "--int8", "--json", "--quiet")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["agreement"] >= 0.9


def test_eval_fp32_model_and_text_output():
    p = run("eval", "fmnist_mobilenet", "--data", "fashion-mnist", "--limit", "500", "--quiet")
    assert p.returncode == 0, p.stderr
    assert re.match(r"fmnist_mobilenet on fashion-mnist \(500 images\): top-1 \d+\.\d\d%", p.stdout)


def test_bad_input_gets_one_line_and_exit_2(tmp_path, capsys):
    def here(*args: str) -> subprocess.CompletedProcess:
        return run_here(capsys, *args)

    # a real process once (exit code, stderr), then in this process
    assert_user_error(run("quantize", "efficientnet_lite9", "--out", str(tmp_path / "a.safetensors")),
                      r"unknown model 'efficientnet_lite9'.*efficientnet_lite0")
    assert_user_error(here("quantize", "resnet18", "--weights", str(tmp_path / "none.pth"), "--out",
                          str(tmp_path / "a.safetensors")), "does not exist")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"nope")
    assert_user_error(here("quantize", "resnet18", "--weights", str(junk), "--out", str(tmp_path / "a.safetensors")),
                      "not a PyTorch checkpoint")
    other = tmp_path / "r18.pth"
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), other)
    assert_user_error(here("quantize", "mobilenet_v2", "--weights", str(other), "--out",
                          str(tmp_path / "a.safetensors")), "another architecture")
    assert_user_error(here("quantize", "fmnist_mobilenet", "--weight-bits", "33", "--out",
                          str(tmp_path / "a.safetensors")), "weight_bits")
    existing = tmp_path / "exists.safetensors"
    existing.write_bytes(b"keep me")
    assert_user_error(here("quantize", "fmnist_mobilenet", "--out", str(existing)), "--force")
    assert existing.read_bytes() == b"keep me"
    assert_user_error(here("quantize", "resnet18", "--weights", str(other), "--out", str(other)),
                      "must not be the weights file")
    empty = tmp_path / "images"
    (empty / "n01440764").mkdir(parents=True)
    assert_user_error(here("eval", "fmnist_mobilenet", "--data", str(empty)), "no images")
    assert_user_error(here("eval", "fmnist_mobilenet", "--data", "nowhere-data"), "unknown data")
    assert_user_error(here("eval", str(junk.with_suffix(".safetensors")), "--data", "fashion-mnist", "--int8"),
                      "--int8 needs a quantized file")
    bad_file = tmp_path / "bad.safetensors"
    bad_file.write_bytes(b"\x01\x02")
    assert_user_error(here("eval", str(bad_file), "--data", "fashion-mnist"), "not a safetensors file")


def test_quantize_with_calibration_data_and_naive_flags(tmp_path):
    out = tmp_path / "f.safetensors"
    p = run("quantize", "fmnist_mobilenet", "--out", str(out), "--act-ranges", "calibrate", "--data",
            "fashion-mnist", "--limit", "256", "--granularity", "channel", "--json", "--quiet")
    assert p.returncode == 0, p.stderr
    cfg = json.loads(p.stdout)["config"]
    assert cfg["act_ranges"] == "calibrate" and cfg["weight_granularity"] == "channel"
    assert_user_error(run("quantize", "fmnist_mobilenet", "--out", str(tmp_path / "g.safetensors"),
                          "--bias-correction", "empirical"), "need --data")


def test_bench_quick_runs_the_speed_benchmark(tmp_path):
    p = run("bench", "--quick", "--only", "quantize_speed", "--out-dir", str(tmp_path), "--json")
    assert p.returncode == 0, p.stderr
    res = json.loads((tmp_path / "quantize_speed.json").read_text())
    assert res["model"] == "efficientnet_lite0" and res["quantize_s_median"] > 0
