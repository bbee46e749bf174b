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


def test_quantize_then_eval_reproduces_readme(tmp_path):
    out = tmp_path / "m.safetensors"
    p = run("quantize", "efficientnet_lite0", "--out", str(out), "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["out"] == str(out) and out.exists() and "equalized regions" in info["summary"]
    p = run("eval", str(out), "--data", "imagenet-sample", "--json", "--quiet")
    assert p.returncode == 0, p.stderr
    m = json.loads(p.stdout)
    assert m["n"] == 160
    # the README's ablation row for the data-free DFQ recipe (same data, same config), within two
    # images of top-1 and agreement and 0.3 dB (thread counts can change float sums in the last bits)
    row = _readme_row("W8A8 +CLE +absorption +bias corr. (DFQ)")
    assert abs(100 * m["top1"] - float(row[1])) <= 1.3, (m, row)
    assert abs(m["agreement"] - float(row[3])) <= 0.013, (m, row)
    assert abs(m["sqnr_db"] - float(row[4])) <= 0.3, (m, row)
    # ... and what README says of it holds for the file the command wrote: DFQ beats naive
    # per-tensor quantization by far and bias correction recovers what equalization alone leaves
    assert m["sqnr_db"] > float(_readme_row("W8A8 naive per-tensor")[4]) + 8, m
    assert m["sqnr_db"] > float(_readme_row("W8A8 +CLE +absorption")[4]) + 4, m
    assert m["agreement"] >= 0.97, m
    # the same file in int8 agrees with the simulation
    p = run("eval", str(out), "--data", "imagenet-sample", "--views", "1", "--int8", "--json", "--quiet")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["agreement"] >= 0.9


def test_eval_fp32_model_and_text_output():
    p = run("eval", "fmnist_mobilenet", "--data", "fashion-mnist", "--limit", "500", "--quiet")
    assert p.returncode == 0, p.stderr
    assert re.match(r"fmnist_mobilenet on fashion-mnist \(500 images\): top-1 \d+\.\d\d%", p.stdout)


def test_bad_input_gets_one_line_and_exit_2(tmp_path):
    assert_user_error(run("quantize", "efficientnet_lite9", "--out", str(tmp_path / "a.safetensors")),
                      r"unknown model 'efficientnet_lite9'.*efficientnet_lite0")
    assert_user_error(run("quantize", "resnet18", "--weights", str(tmp_path / "none.pth"), "--out",
                          str(tmp_path / "a.safetensors")), "does not exist")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"nope")
    assert_user_error(run("quantize", "resnet18", "--weights", str(junk), "--out", str(tmp_path / "a.safetensors")),
                      "not a PyTorch checkpoint")
    other = tmp_path / "r18.pth"
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), other)
    assert_user_error(run("quantize", "mobilenet_v2", "--weights", str(other), "--out",
                          str(tmp_path / "a.safetensors")), "another architecture")
    assert_user_error(run("quantize", "fmnist_mobilenet", "--weight-bits", "33", "--out",
                          str(tmp_path / "a.safetensors")), "weight_bits")
    existing = tmp_path / "exists.safetensors"
    existing.write_bytes(b"keep me")
    assert_user_error(run("quantize", "fmnist_mobilenet", "--out", str(existing)), "--force")
    assert existing.read_bytes() == b"keep me"
    assert_user_error(run("quantize", "resnet18", "--weights", str(other), "--out", str(other)),
                      "must not be the weights file")
    empty = tmp_path / "images"
    (empty / "n01440764").mkdir(parents=True)
    assert_user_error(run("eval", "fmnist_mobilenet", "--data", str(empty)), "no images")
    assert_user_error(run("eval", "fmnist_mobilenet", "--data", "nowhere-data"), "unknown data")
    assert_user_error(run("eval", str(junk.with_suffix(".safetensors")), "--data", "fashion-mnist", "--int8"),
                      "--int8 needs a quantized file")
    bad_file = tmp_path / "bad.safetensors"
    bad_file.write_bytes(b"\x01\x02")
    assert_user_error(run("eval", str(bad_file), "--data", "fashion-mnist"), "not a safetensors file")


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
