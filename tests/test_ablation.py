"""The ablation table that the demo, the benchmark and the notebooks print."""

from __future__ import annotations

import json

from dfq_gpu import data as D
from dfq_gpu import zoo
from dfq_gpu.ablation import ABLATION_ROWS, QUICK_ROWS, format_table, run_ablation, with_weight_bits


def test_rows_cover_the_paper_style_ablation():
    names = [r.name for r in ABLATION_ROWS]
    for needed in ("FP32", "W8 naive per-tensor", "W8 naive per-channel", "W8A8 +CLE", "W8A8 +CLE +absorption",
                   "W8A8 +CLE +absorption +bias corr. (DFQ)", "W8A8 DFQ, relu6=replace", "W8A8 DFQ, relu6=keep"):
        assert needed in names
    dfq = next(r for r in ABLATION_ROWS if r.name.endswith("(DFQ)"))
    assert dfq.config.act_ranges == "bn" and dfq.config.bias_correction == "analytic" and not dfq.uses_data
    assert {r.name for r in QUICK_ROWS} <= set(names)


def test_run_ablation_on_fashion_mnist():
    model, pre = zoo.load_model("fmnist_mobilenet")
    ds = D.fashion_mnist("test", limit=300)
    res = run_ablation(model, ds, model_name="fmnist_mobilenet", rows=QUICK_ROWS, batch_size=100,
                       input_range=pre.input_range, progress=False)
    rows = {r["name"]: r for r in res.rows}
    assert rows["FP32"]["agreement"] == 1.0 and rows["FP32"]["sqnr_db"] is None
    dfq = rows["W8A8 +CLE +absorption +bias corr. (DFQ)"]
    assert dfq["sqnr_db"] > 20 and dfq["agreement"] > 0.95
    assert abs(dfq["top1"] - rows["FP32"]["top1"]) < 0.02
    text = format_table(res)
    assert "fmnist_mobilenet on 300 images" in text and "W8 naive per-channel" in text
    md = format_table(res, markdown=True)
    assert md.splitlines()[0].startswith("| variant | top-1 |") and len(md.splitlines()) == len(QUICK_ROWS) + 2
    assert json.loads(res.to_json())["n"] == 300


def test_rows_at_other_weight_bits():
    rows = with_weight_bits(QUICK_ROWS, 5)
    assert [r.name for r in rows][:3] == ["FP32", "W5 naive per-tensor", "W5 naive per-channel"]
    assert rows[0].config is None
    assert all(r.config.weight_bits == 5 and r.config.replace(weight_bits=8) == q.config
               for r, q in zip(rows[1:], QUICK_ROWS[1:]))
