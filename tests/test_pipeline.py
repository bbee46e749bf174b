"""The declared pass lists of dfq_gpu.pipeline: order, what each needs, what the report records."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import dfq_gpu as D
from dfq_gpu.pipeline import PREPARE, QUANTIZE, Pass, State, run_passes

sys.path.insert(0, str(Path(__file__).parent))
from test_quantize import trained_stats_net  # noqa: E402


def test_the_lists_read_like_the_recipe():
    assert [p.name for p in PREPARE] == ["fold_bn", "record_folded_ranges", "relu6", "observe", "equalize", "absorb"]
    names = [p.name for p in QUANTIZE]
    assert names.index("quantize_weights") < names.index("analytic_bias_correction") < names.index("act_quantizers")
    assert names.index("act_quantizers") < names.index("empirical_bias_correction") < names.index("round_biases")
    # every need is provided by an earlier pass of the recipe, or by the caller (data)
    provided = {"data"}
    for p in PREPARE + QUANTIZE:
        assert set(p.needs) <= provided, (p.name, p.needs)
        provided |= set(p.provides)


def test_report_records_every_pass_and_why_it_did_not_run():
    net, x = trained_stats_net()
    q = D.quantize(net, (x[:2],), D.DFQConfig(equalize=False, bias_correction="none"))
    passes = {p["name"]: p for p in q.report.passes}
    assert list(passes) == [p.name for p in PREPARE + QUANTIZE]
    assert passes["equalize"]["status"] == "off" and passes["equalize"]["why"] == "equalize=False"
    # absorption needs the regions that equalization finds: skipped, with the reason
    assert passes["absorb"] == {"name": "absorb", "status": "skipped",
                                "why": "needs equalization regions (equalize=False)"}
    assert "bias absorption needs equalization regions; skipped because equalize=False" in q.report.steps
    assert passes["analytic_bias_correction"]["status"] == "off"
    assert all(p["seconds"] >= 0 for p in passes.values() if p["status"] == "ran")
    assert {n for n, p in passes.items() if p["status"] == "ran"} >= {"fold_bn", "quantize_weights", "act_quantizers",
                                                                      "round_biases", "integer_arithmetic"}
    # the full recipe runs absorption and the analytic correction
    full = {p["name"]: p["status"] for p in D.quantize(net, (x[:2],)).report.passes}
    assert full["absorb"] == full["equalize"] == full["analytic_bias_correction"] == "ran"


def test_runner_checks_needs_in_declared_order():
    net, x = trained_stats_net()
    ws = D.quantize(net, (x[:2],)).report  # a report to record into
    calls = []
    late = Pass("late", lambda s: calls.append("late"), needs=("stats",))
    early = Pass("early", lambda s: calls.append("early"), provides=("stats",))

    class _WS:
        report = ws
        cfg = D.DFQConfig()

    ws.passes.clear()
    have = run_passes((late, early, late), State(_WS()))  # type: ignore[arg-type]
    assert calls == ["early", "late"] and have == {"stats"}
    assert [p["status"] for p in ws.passes] == ["skipped", "ran", "ran"]
    assert "nothing before it provides it" in ws.passes[0]["why"]


def test_saved_report_keeps_the_passes(tmp_path):
    net, x = trained_stats_net()
    q = D.quantize(net, (x[:2],))
    D.save(q, tmp_path / "m.safetensors")
    q2 = D.load(tmp_path / "m.safetensors")
    assert [p["name"] for p in q2.report.passes] == [p["name"] for p in q.report.passes]
    with torch.no_grad():
        assert torch.equal(q(x[:4]), q2(x[:4]))
