"""A shortened `clap-edge demo` run end to end, and the report's documented shape."""

from __future__ import annotations

import contextlib
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
    report = run_demo(config, say=messages.append, bars=lambda: _recording(TASKS))
    return out, report, messages


TASKS: dict[str, float | None] = {}  # progress task -> its total, as the demo reported them


@contextlib.contextmanager
def _recording(tasks):
    def progress(task, advance=1, total=None):
        tasks[task] = total if total is not None else tasks.get(task)

    yield progress


def test_demo_reports_progress_for_every_long_step(demo_report):
    """Issue 22: the head's training (the demo's longest step) and the other long steps show progress."""
    assert TASKS.get("training head") == 40  # train_steps: a bar with a known total
    for task in ("writing toy images", "encoding texts", "encoding val images", "encoding test images",
                 "exporting bundles"):
        assert task in TASKS, sorted(TASKS)


def test_demo_writes_the_documented_report(demo_report):
    out, report, messages = demo_report
    from clap_edge.apps.demo import STEPS

    assert len(messages) == STEPS == 8  # one line per step
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
    assert h["style_isolating_domains"]["n_images"] == 2 * 8 * 4 and h["id"]["n_images"] == 8 * 4
    assert all(h[k]["verdict"] in ("helps", "costs", "no_distinguishable_effect") for k in ("id", "style_laden_prompts"))
    attacks = report["attacks"]
    assert [a["name"] for a in attacks["attacks"]] == ["fgsm", "pgd20"] and set(attacks["domains"]) == {"id", "style_swap"}
    for cells in attacks["domains"].values():
        assert set(cells) == {f"{m} {a}" for m in ("clip", "clap") for a in ("clean", "fgsm", "pgd20")}
        assert all(c["n"] == 8 for c in cells.values())
    assert "## attacks" in (out / "report.md").read_text() and (out / "attacks.png").read_bytes()[:4] == b"\x89PNG"


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


def test_demo_few_shot_section(demo_report):
    out, report, _ = demo_report
    from clap_edge.toyworld.world import DOMAINS

    few = report["few_shot"]
    assert list(few["domains"]) == list(DOMAINS) and few["alphas"] == {"clap": report["alpha"]}
    assert few["settings"]["shots"] == [1, 4, 16] and few["settings"]["probe"]["lr"] == 0.005
    for by_k in few["domains"].values():
        assert list(by_k) == ["1", "4", "16"]
        for cells in by_k.values():
            assert cells["clip"]["n"] == cells["clap"]["n"] == 8 * 4 and len(cells["clap"]["draws"]) == 2
            d = cells["clap"]["minus_clip"]
            assert d["ci95"][0] <= d["points"] <= d["ci95"][1]
    assert (out / "fewshot.png").stat().st_size > 0
    assert "## Few-shot linear probe, leave one domain out" in (out / "report.md").read_text()


def test_demo_seed_reaches_dataset_training_and_bootstrap(monkeypatch, tmp_path):
    from clap_edge.apps import demo as demo_app

    seen = []
    monkeypatch.setattr(demo_app, "run_demo", lambda config, say, bars=None: seen.append(config) or {"ok": 1})
    res = CliRunner().invoke(main, ["demo", "--seed", "7", "--test-per-class", "3", "--out", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    assert seen[0].seeds == {"dataset": 7, "train": 7, "bootstrap": 7} and seen[0].test_per_class == 3


def test_demo_dataset_changes_with_the_seed_and_reproduces(tmp_path):
    from clap_edge.apps.demo import DemoConfig, _make_dataset

    def pngs(seed, name):
        root = _make_dataset(tmp_path / name, DemoConfig.seeded(seed, per_class=1, test_per_class=2))
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}

    a, again, other = pngs(0, "a"), pngs(0, "again"), pngs(1, "other")
    assert a == again
    assert a.keys() == other.keys() and sum(a[k] != other[k] for k in a) > len(a) // 2
    from clap_edge.toyworld.world import CLASSES, DOMAINS

    assert sum(k.startswith("test/") for k in a) == 2 * len(CLASSES) * len(DOMAINS)
    assert sum(k.startswith("val/") for k in a) == len(CLASSES) * len(DOMAINS)


def test_spread_over_seeds_says_which_verdicts_hold(demo_report):
    import copy

    from clap_edge.apps.demo_spread import attach_spread, spread

    out, report, _ = demo_report
    other = copy.deepcopy(report)
    other["seeds"] = {k: 1 for k in report["seeds"]}
    flipped = "costs" if report["headline"]["id"]["verdict"] != "costs" else "helps"
    other["headline"]["id"].update(verdict=flipped, points=report["headline"]["id"]["points"] + 2.0)
    s = spread([report, other])
    assert s["seeds"] == [0, 1]
    assert s["headline"]["style_isolating_domains"]["holds"] and not s["headline"]["id"]["holds"]
    assert s["headline"]["id"]["mean_points"] == pytest.approx(report["headline"]["id"]["points"] + 1.0, abs=0.01)
    assert s["headline"]["id"]["verdict_counts"] == {report["headline"]["id"]["verdict"]: 1, flipped: 1}
    attach_spread(out, s)
    md = (out / "report.md").read_text()
    assert "## Across seeds (2 runs, seeds 0, 1" in md and "| id | 32 |" in md and "| no: " in md
