"""The throughput benchmark runs and writes its table (a smoke test: no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_writes_a_row_per_shape_and_implementation(tmp_path):
    out = tmp_path / "bench.json"
    args = ["--shapes", "1x4,2x3", "--sizes", "1,2", "--rounds", "1", "--seconds", "0.01"]
    args += ["--steps-per-seq", "6", "--chorales", "20", "--batch", "4", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench/train_throughput.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "| (1, 4) |" in proc.stdout and "| (2, 3) |" in proc.stdout
    result = json.loads(out.read_text())
    assert {(r["depth"], r["width"], r["impl"]) for r in result["rows"]} == {
        (d, w, impl) for d, w in ((1, 4), (2, 3)) for impl in ("plain", "S=1", "S=2")
    }
    for row in result["rows"]:
        assert row["model_steps_per_s"] > 0 and row["gflops"] > 0
        assert (row["impl"] == "plain") == (row["ratio_to_plain"] == 1.0)
    assert result["meta"]["peak_gflops"] > 0
