"""The comparison experiment's --quick smoke run: three models, one seed, tiny data."""

import json

from experiments import compare


def test_quick_comparison_writes_consistent_results(tmp_path, monkeypatch):
  monkeypatch.setenv("FCSLSTM_DATA_DIR", str(tmp_path / "data"))
  out = tmp_path / "results"
  summary = compare.main(["--quick", "--out", str(out), "--workdir", str(tmp_path / "runs")])
  saved = json.loads((out / "compare-bric.json").read_text())
  assert [r["model"] for r in saved["runs"]] == ["fcn", "fcslstm", "bi-fcslstm"]
  # The table is made from the runs, not typed: JSON, summary and markdown agree.
  for r in saved["runs"]:
    row = saved["summary"]["models"][r["model"]]
    assert row["test_mpa"][0] == r["test"]["mpa"] and row["test_mpa"][1] is None  # 1 seed
    assert f"| {100 * r['test']['mpa']:.1f} |" in (out / "compare-bric.md").read_text()
    assert 0.0 <= r["test"]["mpa"] <= 1.0
    assert len(r["temporal_consistency"]) == 4
  rows = [
    line for line in (out / "compare-bric.md").read_text().splitlines() if line.startswith("|")
  ]
  assert len(rows) == 2 + 3 and len({row.count("|") for row in rows}) == 1, rows  # a valid table
  p = saved["summary"]["models"]
  assert p["fcn"]["parameters"] < p["fcslstm"]["parameters"] < p["bi-fcslstm"]["parameters"]
  assert summary["models"].keys() == p.keys()
  assert (out / "compare-bric.png").stat().st_size > 0
  assert (out / "compare-bric-fig4.png").stat().st_size > 0


def test_spread_over_seeds_is_the_sample_standard_deviation():
  mean, std = compare.mean_std([0.80, 0.82, 0.84, None])
  assert abs(mean - 0.82) < 1e-12 and abs(std - 0.02) < 1e-12  # ddof=1 (ddof=0: 0.0163)
  assert compare.mean_std([0.5]) == (0.5, None) and compare.mean_std([]) == (None, None)
