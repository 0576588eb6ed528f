"""bench/cpu_time_figures.py --compare: the quiet-vs-loaded verdict of issue 21, on hand-made reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "cpu_time_figures.py"


def _report(path: Path, gemms: float | None, square: float, load: float) -> Path:
    row = {"backend": "onnxruntime", "batch_size": 1, "fraction_of_model_gemms_raw": gemms,
           "fraction_of_ceiling_raw": square, "gflops_per_s": 10.0}
    env = {"load_average_before": [load, load, load], "steal_ticks_before": 0, "steal_ticks_after": 100}
    path.write_text(json.dumps({"env": env, "results": [row]}))
    return path


def _compare(a: Path, b: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--compare", str(a), str(b)], capture_output=True, text=True)


def test_within_ten_percent_of_its_own_gemms_passes_whatever_the_square_gemm_says(tmp_path):
    quiet = _report(tmp_path / "q.json", 0.80, 0.30, 0.5)
    loaded = _report(tmp_path / "l.json", 0.75, 0.07, 4.5)  # -6.25% of its GEMMs, -77% of the square GEMM
    done = _compare(quiet, loaded)
    assert done.returncode == 0, done.stdout
    assert "-6.3%" in done.stdout and "-76.7%" in done.stdout


def test_more_than_ten_percent_fails(tmp_path):
    done = _compare(_report(tmp_path / "q.json", 0.80, 0.30, 0.5), _report(tmp_path / "l.json", 0.70, 0.30, 4.5))
    assert done.returncode == 1 and "-12.5%" in done.stdout


def test_reports_without_the_model_gemm_fraction_cannot_pass(tmp_path):
    done = _compare(_report(tmp_path / "q.json", None, 0.30, 0.5), _report(tmp_path / "l.json", None, 0.30, 4.5))
    assert done.returncode == 1 and "no row has a fraction of its own GEMMs" in done.stdout
