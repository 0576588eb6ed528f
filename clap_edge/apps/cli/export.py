"""``clap-edge export`` (head + model -> bundle) and ``clap-edge inspect`` (manifest summary + sha256 check)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from clap_edge.apps.cli.exitcodes import BAD_INPUT

if TYPE_CHECKING:
    from clap_edge.export.bundle.manifest import Manifest


@click.command("export")
@click.option("--head", "head_path", type=click.Path(exists=True, dir_okay=False),
              help="trained CLAP head (.safetensors); model and classes default to its metadata.")
@click.option("--out", required=True, type=click.Path(), help="bundle directory to write.")
@click.option("--model", "model_name", default=None, help="open_clip model name (default: the head's).")
@click.option("--pretrained", default=None,
              help="open_clip tag or checkpoint path (default: the head's; none = random init, speed work only).")
@click.option("--classes", default=None, help="class names: a file (one per line), a dataset folder, or a,b,c.")
@click.option("--alpha", type=float, default=None, help="head residual scale at inference (default: the head's).")
@click.option("--no-head", is_flag=True, help="plain CLIP (alpha 0), a baseline through the same pipeline.")
@click.option("--templates", "templates_file", type=click.Path(exists=True, dir_okay=False),
              help='prompt templates, one per line with "{c}" for the class (default: "a photo of a {c}.").')
@click.option("--calibration", type=click.Path(exists=True, file_okay=False),
              help="folder of representative images: the parity check's batch and the static int8 calibration "
                   "(default: seeded synthetic images; --int8-static / --openvino-int8 need a folder).")
@click.option("--calibration-count", type=click.IntRange(min=1), default=64, show_default=True,
              help="images --int8-static / --openvino-int8 calibrate on (evenly spaced over the folder).")
@click.option("--calibration-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True, help="activation range calibration of --int8-static (ONNX Runtime).")
@click.option("--int8-max-drop", type=click.FloatRange(min=0.0, max=1.0, max_open=True), default=0.0025,
              show_default=True,
              help="int8 accuracy control: keep the costliest layers in float until top-1 agreement with fp32 on "
                   "--calibration images is >= 1 - this (counted and expected on unseen images).")
@click.option("--no-int8-control", is_flag=True, help="plain post-training int8 (no layer kept in float).")
@click.option("--opset", type=click.IntRange(min=13), default=17, show_default=True, help="ONNX opset.")
@click.option("--int8", is_flag=True, help="add model.int8.onnx (dynamic int8, CPU).")
@click.option("--int8-static", is_flag=True,
              help="add model.qdq.onnx (static int8, QDQ: ONNX Runtime CPU --precision int8-static, TensorRT).")
@click.option("--openvino-int8", is_flag=True,
              help="add model.int8.xml/.bin (NNCF int8 OpenVINO IR: --backend openvino --precision int8).")
@click.option("--fp16", is_flag=True, help="add model.fp16.onnx (fp16 weights, GPU).")
@click.option("--executorch", "executorch_precisions", default=None, metavar="fp32|int8|fp32,int8",
              help="add model.pte / model.int8.pte (ExecuTorch, XNNPACK; phones and boards; int8 needs --calibration).")
@click.option("--litert", "litert_precisions", default=None, metavar="fp32|int8|fp32,int8",
              help="add model.tflite / model.int8.tflite (LiteRT CPU; int8 needs --calibration).")
@click.option("--litert-python", default=None, type=click.Path(exists=True, dir_okay=False),
              help="a Python with litert-torch, which cannot share clap-edge[sign]'s environment "
                   "(default: $CLAP_EDGE_LITERT_PYTHON, else this Python).")
@click.option("--target", type=click.Choice(["x86", "arm-phone", "jetson"]), default=None,
              help="add the variants worth shipping to that device (docs/mobile.md); explicit flags add more.")
@click.option("--eval", "eval_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="labelled dataset (DIR/{val,test}/<domain>/<class>/*): score every variant against fp32 on its "
                   "test split (top-1 per domain, agreement) into the manifest's drift section.")
@click.option("--eval-per-class", type=click.IntRange(min=1), default=None,
              help="at most this many --eval images per class and domain (default: all).")
@click.option("--no-torch-program", is_flag=True, help="leave out model.pt2 (the torch backend's program).")
@click.option("--text-encoder", is_flag=True,
              help="add text.onnx (+ text.int8.onnx with --int8) and the tokenizer: `clap-edge classes` and "
                   "Classifier.set_classes then change the classes on the device, without torch.")
@click.option("--tolerance", type=float, default=1e-3, show_default=True,
              help="max |dlogit| torch vs ONNX Runtime (fp32) before the export fails.")
@click.option("--force", is_flag=True, help="replace BUNDLE if it exists.")
@click.option("--json", "as_json", is_flag=True, help="print the written manifest's summary as JSON.")
def export(head_path, out, model_name, pretrained, classes, alpha, no_head, templates_file, calibration,
           calibration_count, calibration_method, int8_max_drop, no_int8_control, opset, int8, int8_static,
           openvino_int8, fp16, executorch_precisions, litert_precisions, litert_python, target, eval_dir, eval_per_class, no_torch_program, text_encoder, tolerance,
           force, as_json):
    """Export a CLAP head (or plain CLIP with --no-head) as a bundle: ONNX, variants, manifest.

    The export checks torch vs ONNX Runtime on a calibration batch and writes nothing
    if they differ by more than --tolerance.

    \b
    Example:
      clap-edge export --head head.safetensors --out bundle --int8
      clap-edge export --model ViT-B-32 --classes cat,dog --no-head --out clip-bundle
      clap-edge export --head head.safetensors --out bundle --int8 --int8-static --openvino-int8 \\
          --calibration toy-data/val --eval toy-data
      clap-edge export --head head.safetensors --out phone-bundle --target arm-phone --calibration toy-data/val
      clap-edge export --head head.safetensors --out bundle --executorch fp32,int8 --calibration toy-data/val
    """
    from clap_edge.core.errors import ClapEdgeError
    from clap_edge.export.bundle import Bundle
    from clap_edge.export.builders.exporter import ExportConfig, export_bundle
    from clap_edge.prompts import load_class_names

    if no_head and head_path:
        raise ClapEdgeError("--no-head and --head exclude each other")
    if not no_head and not head_path:
        raise ClapEdgeError("pass --head HEAD.safetensors, or --no-head for plain CLIP")
    if no_head and not model_name:
        raise ClapEdgeError("--no-head needs --model NAME")
    if no_head and alpha not in (None, 0.0):
        raise ClapEdgeError("--alpha needs a head (--no-head means alpha 0)")
    profile = _target_profile(target)
    int8, int8_static, openvino_int8, fp16 = (int8 or profile["int8"], int8_static or profile["int8_static"],
                                              openvino_int8 or profile["openvino_int8"], fp16 or profile["fp16"])
    executorch = _precisions(executorch_precisions, "--executorch", profile["executorch"])
    litert = _precisions(litert_precisions, "--litert", profile["litert"])
    if (int8_static or openvino_int8) and not calibration:
        raise ClapEdgeError("--int8-static / --openvino-int8 need --calibration DIR (representative images)"
                            + (f" (--target {target} builds them)" if target else ""))
    if "int8" in (*executorch, *litert) and not calibration:
        raise ClapEdgeError("int8 ExecuTorch / LiteRT variants need --calibration DIR (representative images)"
                            + (f" (--target {target} builds them)" if target else ""))
    _check_inputs(out, force, model_name, pretrained)
    cfg = ExportConfig(
        out=out,
        model_name=model_name,
        pretrained=pretrained,
        head=None if no_head else head_path,
        classes=load_class_names(classes) if classes is not None else None,  # "" is an error, not "none"
        alpha=alpha,
        templates=_read_templates(templates_file) if templates_file else None,
        opset=opset,
        int8=int8,
        int8_static=int8_static,
        openvino_int8=openvino_int8,
        fp16=fp16,
        executorch=executorch,
        litert=litert,
        litert_python=litert_python,
        torch_program=not no_torch_program,
        text_encoder=text_encoder,
        overwrite=force,
        calibration=calibration,
        calibration_count=calibration_count,
        calibration_method=calibration_method,
        int8_max_drop=None if no_int8_control else int8_max_drop,
        eval=eval_dir,
        eval_per_class=eval_per_class,
        parity_tolerance=tolerance,
    )
    with _status() as say:
        cfg.progress = say
        path = export_bundle(cfg)
    with Bundle.open(path) as bundle:
        _print_summary(bundle, {n: "ok" for n in bundle.file_names}, as_json)


def _check_inputs(out: str, force: bool, model_name: str | None, pretrained: str | None) -> None:
    """What can be checked before torch loads: the model name, a checkpoint path, the output folder."""
    from clap_edge.apps.cli.checks import check_model_name, check_output_dir, check_pretrained_path, require_extra
    from clap_edge.core.errors import ClapEdgeError

    require_extra("export", "train")
    check_model_name(model_name)
    check_pretrained_path(pretrained)
    if Path(out).exists() and not force:
        raise ClapEdgeError(f"--out {out}: already exists (pass --force to replace it)")
    check_output_dir(out)


@click.command("inspect")
@click.argument("bundle", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="print the summary and file checks as one JSON object.")
def inspect(bundle, as_json):
    """Summarise BUNDLE's manifest and verify the sha256 of every file (exit 2 naming any bad one).

    \b
    Example:
      clap-edge inspect bundle/ --json
    """
    from clap_edge.export.bundle import Bundle

    from clap_edge.export.bundle.signing import signature_key_id

    with Bundle.open(bundle, verify=False) as opened:
        checks = opened.verify_all()
        _print_summary(opened, checks, as_json, signed_by=signature_key_id(opened.root))
    bad = {name: problem for name, problem in checks.items() if problem != "ok"}
    if bad:
        for problem in bad.values():
            click.secho(f"error: {bundle}: {problem}", fg="red", err=True)  # problem names the file
        sys.exit(BAD_INPUT)


# ---- helpers ------------------------------------------------------------------------


def summarise(manifest: "Manifest", checks: dict[str, str]) -> dict:
    """The parts of a manifest a person (or script) wants to see, plus the file checks (JSON values)."""
    from clap_edge.export.bundle.manifest import to_json

    m = manifest
    return {
        "model": to_json(m.model),
        "alpha": m.alpha,
        "embed_dim": m.embed_dim,
        "num_classes": len(m.class_names),
        "class_names": list(m.class_names),
        "templates": list(m.templates),
        "preprocess": to_json(m.preprocess),
        "inputs": to_json(m.inputs),
        "outputs": to_json(m.outputs),
        "opset": m.opset,
        "flops_per_image": m.flops_per_image,
        "variants": dict(m.variants),
        "parity": to_json(m.parity),
        "drift": to_json(m.drift or {}),
        "engines": to_json(m.engines or ()),  # compiled engines (clap-edge build-engine), one entry each
        "schema_version": m.schema_version,
        "clap_edge_version": m.clap_edge_version,
        "files": {name: {"bytes": entry.bytes, "check": checks.get(name, "unchecked")}
                  for name, entry in m.files.items()},
    }


def _print_summary(bundle, checks: dict[str, str], as_json: bool, signed_by: str | None = None) -> None:
    summary = summarise(bundle.manifest, checks)
    # Who signed (the key fingerprint the signature names; `clap-edge verify` checks it against a trusted key).
    summary["signature"] = {"signed": signed_by is not None, "key_fingerprint": signed_by, "verified": False}
    if as_json:
        click.echo(json.dumps({"bundle": str(bundle.root), **summary}, indent=2))
        return
    from rich.table import Table

    from clap_edge.apps.console import stdout_console

    console = stdout_console()
    model = summary["model"] or {}
    head = model.get("head")
    head_text = f"CLAP head (alpha {summary['alpha']}, latent {head['latent_dim']}, {head['activation']})" if head \
        else "none (plain CLIP)"
    names = summary["class_names"] or []
    shown = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
    pre = summary["preprocess"] or {}
    console.print(f"[bold]{bundle.root}[/bold]  (schema {summary['schema_version']}, clap-edge {summary['clap_edge_version']})")
    console.print(f"model      {model.get('model_name')}  pretrained={model.get('pretrained')}")
    console.print(f"head       {head_text}")
    console.print("signed     " + (f"by key sha256:{signed_by[:16]}... (unverified; check with `clap-edge "
                                   "verify --trusted-key`)" if signed_by else "no (`clap-edge sign`)"), soft_wrap=True)
    console.print(f"classes    {summary['num_classes']}: {shown}")
    console.print(f"embedding  {summary['embed_dim']}-d   opset {summary['opset']}   "
                  f"{_gflops(summary['flops_per_image'])} per image")
    console.print(f"preprocess {pre.get('size')} {pre.get('resize_mode')} {pre.get('interpolation')} "
                  f"mean={pre.get('mean')} std={pre.get('std')}")
    console.print(_parity_table(summary))
    if summary["drift"]:
        console.print(_drift_table(summary["drift"]))
    files = Table(title="files", title_justify="left")
    for col in ("file", "bytes", "sha256"):
        files.add_column(col)
    for name, info in summary["files"].items():
        ok = info["check"] == "ok"
        files.add_row(name, f"{info['bytes']:,}" if info["bytes"] is not None else "?",
                      "[green]ok[/green]" if ok else f"[red]{info['check']}[/red]")
    console.print(files)


def _parity_table(summary: dict):
    from rich.table import Table

    n = max((p.get("n_images") or 0 for p in summary["parity"].values()), default=0)
    table = Table(title="variants and parity", title_justify="left",
                  caption=f"top-1 agreement: share of the {n} parity images (the calibration batch) whose top class "
                          f"equals the reference's; one image is {1 / n:.1%} of it. `export --eval DATASET` "
                          "measures agreement per domain on a test split." if n else None,
                  caption_justify="left")
    for col in ("variant", "file", "vs", "max |dlogit|", "top-1 agreement", "images"):
        table.add_column(col)
    parity = summary["parity"]
    for variant, file in summary["variants"].items():
        p = parity.get(variant, {})
        if variant == "fp32":
            vs, diff, agree = "torch", p.get("max_abs_logit_diff"), p.get("top1_agreement")
        else:
            vs, diff, agree = "fp32", p.get("max_abs_logit_diff_vs_fp32"), p.get("top1_agreement_vs_fp32")
        table.add_row(variant, file, vs if p else "-", _num(diff, "{:.2e}"), _num(agree, "{:.1%}"),
                      str(p.get("n_images", "-")))
    return table


def _drift_table(drift: dict):
    """Per variant and domain: fp32 top-1, the variant's top-1, their difference and the agreement."""
    from rich.table import Table

    first = next(iter(drift.values()))
    table = Table(title=f"drift vs fp32 ({first.get('split', '?')} split)", title_justify="left")
    for col in ("variant", "domain", "images", "fp32 top-1", "top-1", "d top-1 (pts)", "agreement"):
        table.add_column(col)
    for variant, d in drift.items():
        rows = [*d.get("domains", {}).items(), ("all", d)]
        for domain, r in rows:
            agree = r.get("agreement")
            flag = "red" if agree is not None and agree < 0.99 else None
            table.add_row(variant, domain, str(r.get("n_images", "-")), _num(r.get("fp32_top1"), "{:.1%}"),
                          _num(r.get("top1"), "{:.1%}"),
                          _num(None if r.get("top1") is None else 100 * (r["top1"] - r["fp32_top1"]), "{:+.2f}"),
                          f"[{flag}]{agree:.1%}[/{flag}]" if flag else _num(agree, "{:.1%}"))
    return table


def _num(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _gflops(flops) -> str:
    return "? FLOPs" if flops is None else f"{flops / 1e9:.3f} GFLOPs"


def _target_profile(target: str | None) -> dict:
    """The variants --target adds (all off without one)."""
    if target is None:
        return {"int8": False, "int8_static": False, "openvino_int8": False, "fp16": False, "executorch": (),
                "litert": ()}
    from clap_edge.export.builders.mobile_variants import target_settings

    return {"fp16": False, **target_settings(target)}


def _precisions(value: str | None, option: str, base: tuple[str, ...]) -> tuple[str, ...]:
    """"fp32,int8" -> ("fp32", "int8"), merged with the target's; a bad name is one line, exit 2."""
    from clap_edge.core.errors import ClapEdgeError

    asked = [p.strip() for p in (value or "").split(",") if p.strip()]
    bad = [p for p in asked if p not in ("fp32", "int8")]
    if bad or (value is not None and not asked):
        raise ClapEdgeError(f"{option}: expected fp32, int8 or fp32,int8, got {value!r}")
    return tuple(dict.fromkeys([*base, *asked]))


def _read_templates(path: str) -> list[str]:
    from clap_edge.core.errors import PromptError

    lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    templates = [ln for ln in lines if ln and not ln.startswith("#")]
    if not templates:
        raise PromptError(f"{path}: no templates")
    bad = [t for t in templates if "{c}" not in t and "{}" not in t]
    if bad:
        raise PromptError(f"{path}: template {bad[0]!r} has no '{{c}}' placeholder for the class name")
    return templates


class _status:
    """A rich spinner on stderr whose text follows the exporter's progress messages."""

    def __enter__(self):
        from rich.console import Console

        self._status = Console(stderr=True).status("exporting")
        self._status.__enter__()
        return lambda msg: self._status.update(msg)

    def __exit__(self, *exc):
        return self._status.__exit__(*exc)


COMMANDS = [export, inspect]
