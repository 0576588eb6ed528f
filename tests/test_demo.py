"""A shortened `clap-edge demo` run end to end, and the report's documented shape."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from clap_edge.apps.cli import main

MODELS = ("clip-fp32", "clip-int8", "clap-fp32", "clap-int8")


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    from clap_edge.apps.demo import DemoConfig, run_demo

    out = tmp_path_factory.mktemp("demo")
    config = DemoConfig(out=str(out), per_class=4, test_per_class=4, attack_per_class=1, train_steps=40, alphas=(0.0, 0.1, 0.3), bench_iters=2,
                        bench_batch_sizes=(1,), bench_backends=("onnxruntime", "onnxruntime-int8"), n_boot=100,
                        style_draws=2)
    messages: list[str] = []
    report = run_demo(config, say=messages.append)
    return out, report, messages


def test_demo_writes_the_documented_report(demo_report):
    out, report, messages = demo_report
    assert len(messages) == 7  # one line per step
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    from clap_edge.toyworld.world import DOMAINS

    assert set(report["domains"]) == set(DOMAINS)
    for cells in report["domains"].values():
        assert set(MODELS) <= set(cells)
        for model in MODELS:
            top1, (lo, hi) = cells[model]["top1"], cells[model]["ci95"]
            assert 0 <= lo <= top1 <= hi <= 100
            assert cells[model]["n"] == 8 * 4
        for name in ("clip", "clap"):
            int8 = cells[f"{name}-int8"]
            assert 0 <= int8["agreement_vs_fp32"] <= 100
            assert int8["drift_vs_fp32"] == pytest.approx(int8["top1"] - cells[f"{name}-fp32"]["top1"], abs=0.02)
    assert report["alpha"] == report["alphas"]["PC"] in (0.0, 0.1, 0.3)
    assert report["alpha_objective"] == "worst"
    # the alpha grid: family -> domain -> alpha -> cell, every domain and alpha of the config
    assert set(report["alpha_grid"]) == {"C", "PC", "NC", "S"} == set(report["alphas"])
    for family, grid in report["alpha_grid"].items():
        assert set(grid) == set(DOMAINS)
        assert set(report["alpha_validation"][family]) == {"0.0", "0.1", "0.3"}
        best = max(report["alpha_validation"][family].values())
        assert report["alphas"][family] == min(float(a) for a, v in report["alpha_validation"][family].items()
                                               if v == best)
        for cells in grid.values():
            assert set(cells) == {"0.0", "0.1", "0.3"}
            assert cells["0.0"]["minus_clip"] == {"points": 0.0, "ci95": [0.0, 0.0]}
            for cell in cells.values():
                assert cell["n"] == 8 * 4
                lo, hi = cell["minus_clip"]["ci95"]
                assert lo <= cell["minus_clip"]["points"] <= hi
                assert cell["minus_clip"]["points"] == pytest.approx(cell["top1"] - cells["0.0"]["top1"], abs=0.02)
    h = report["headline"]
    assert h["style_isolating_domains"]["domains"] == ["style_swap", "style_swap_render"]
    assert h["id"]["domains"] == ["id"] and len(h["style_laden_prompts"]["domains"]) == len(DOMAINS)
    swap = [report["alpha_grid"]["PC"][d][str(h["id"]["alpha"])]["top1"] for d in ("style_swap", "style_swap_render")]
    assert h["style_isolating_domains"]["clap_top1"] == pytest.approx(sum(swap) / 2, abs=0.02)  # equal-sized
    for family, verdict in h["per_family"].items():
        assert sorted(sum(verdict.values(), [])) == sorted(DOMAINS)
    assert set(report["bundles"]) == {"clip", "clap"}
    assert report["dataset"].endswith("test") and report["seeds"]["dataset"] == 0
    assert report["train"]["steps_run"] == 40
    rows = report["bench"]["results"]
    assert {r["backend"] for r in rows} == {"onnxruntime", "onnxruntime-int8"}
    for row in rows:
        assert row["batch_size"] == 1 and row["p50_ms"] > 0 and row["images_per_s"] > 0
    assert set(report["clap_minus_clip_fp32"]) == set(DOMAINS)


def test_demo_bundles_and_files_are_usable(demo_report):
    out, report, _ = demo_report
    from clap_edge.export.bundle import Bundle

    for path in report["bundles"].values():
        with Bundle.open(path) as bundle:
            assert bundle.has_variant("int8")
            assert all(v == "ok" for v in bundle.verify_all().values())
    assert Bundle.open(report["bundles"]["clap"]).manifest.alpha == report["alpha"]
    md = (out / "report.md").read_text()
    assert "| id |" in md and "CLAP minus CLIP" in md and "Style-isolating domains" in md
    assert md.count("| domain \\ alpha |") == 4
    for png in ("accuracy.png", "bench.png", "alpha.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_demo_is_deterministic_for_fixed_seeds(demo_report, tmp_path):
    """The torch steps again with the same seeds: the same head and the same alpha grid."""
    from clap_edge.apps.demo import DemoConfig, _alpha_grid, _torch_threads, _train_head

    out, report, _ = demo_report
    config = DemoConfig(**{**report["config"], "out": str(tmp_path)})
    with _torch_threads(1):
        _, summary = _train_head(tmp_path / "head.safetensors", config)
        again = _alpha_grid(out / "data", tmp_path / "head.safetensors", config)
    assert summary["final_loss"] == report["train"]["final_loss"]
    assert {k.split("/")[1]: v for k, v in again.as_dict()["alpha_grid"].items()} == report["alpha_grid"]


def test_demo_help_has_an_example():
    res = CliRunner().invoke(main, ["demo", "--help"])
    assert res.exit_code == 0 and "clap-edge demo --out" in res.output
