"""``clap-edge eval``: zero-shot top-1 per domain, CLIP vs CLAP heads, and bundle variants."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("eval")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--head", "heads", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="a CLAP head (.safetensors); repeat to compare several. CLIP is always included.")
@click.option("--model", "model_name", default=None, help="open_clip model (default: the first head's).")
@click.option("--pretrained", default=None, help="pretrained tag or checkpoint (default: the first head's).")
@click.option("--bundle", "bundles", multiple=True,
              help="NAME=BUNDLE (or BUNDLE): also score an exported bundle's variants through the runtime.")
@click.option("--variants", default="fp32,int8", show_default=True,
              help="bundle variants (fp32, int8) or backends (openvino, torch, ...) to score.")
@click.option("--prompts", default="C", show_default=True, help="prompt formats: C, CP, PC, NC (comma list).")
@click.option("--alpha", type=float, default=None, help="use this alpha; default: chosen on the val/ split.")
@click.option("--per-class", type=int, default=None, help="use at most N images per class and domain.")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="write eval.md, eval.json and eval.png here.")
@click.option("--seed", type=int, default=0, show_default=True, help="bootstrap and noise seed.")
@click.option("--json", "as_json", is_flag=True, help="print the JSON result.")
def evaluate(dataset, heads, model_name, pretrained, bundles, variants, prompts, alpha, per_class, out, seed, as_json):
    """Zero-shot top-1 per domain with paired-bootstrap 95% CIs.

    DATASET holds `val/` and `test/` splits of `<domain>/<class>/*` images (as `clap-edge toy
    dataset` writes), or one such tree used as the test split. Heads are evaluated on the
    frozen model with alpha chosen on `val/` (never on test) unless --alpha is given;
    bundles are run through the runtime, so fp32 and int8 exports are scored the same way.

    \b
    Example:
      clap-edge toy dataset toy-data
      clap-edge eval toy-data --model clap-edge-toy --pretrained toyworld --head head.safetensors --prompts C,PC
    """
    from clap_edge.core.errors import ClapEdgeError

    if not heads and not bundles and not model_name:
        raise ClapEdgeError("nothing to evaluate: pass --head, --model or --bundle")
    tables, result = {}, {"dataset": str(dataset)}
    if heads or model_name:
        tables["model"], result["model"] = _eval_heads(dataset, heads, model_name, pretrained, prompts, alpha,
                                                       per_class, seed, progress=not as_json)
    if bundles:
        tables["bundles"], result["bundles"] = _eval_bundles(dataset, bundles, variants, per_class, seed,
                                                             progress=not as_json)
    _emit(tables, result, out, as_json)


def _eval_heads(dataset, heads, model_name, pretrained, prompts, alpha, per_class, seed, progress):
    from clap_edge.apps.progress import progress_bar
    from clap_edge.zeroshot import EvalConfig, evaluate_folder
    from clap_edge.head import CLAPHead
    from clap_edge.models import load_model

    loaded_heads = {Path(h).stem if len(heads) > 1 else "clap": CLAPHead.load(h) for h in heads}
    first = next(iter(loaded_heads.values()), None)
    model_name = model_name or (first.config.model_name if first else None)
    pretrained = pretrained or (first.config.pretrained if first else None)
    config = EvalConfig(prompt_formats=tuple(p.strip() for p in prompts.split(",")), alpha=alpha, seed=seed)
    loaded = load_model(model_name, pretrained)
    with progress_bar(enabled=progress) as bar:
        res, class_names = evaluate_folder(dataset, loaded, loaded_heads, config, per_class=per_class, progress=bar)
    return res.domains, {"model_name": model_name, "pretrained": pretrained, "classes": class_names, **res.as_dict()}


def _eval_bundles(dataset, bundles, variants, per_class, seed, progress):
    from clap_edge.core.datasets import find_splits
    from clap_edge.apps.accuracy import evaluate_bundles

    named = dict(b.split("=", 1) if "=" in b else (Path(b).name, b) for b in bundles)
    res = evaluate_bundles(str(find_splits(dataset)["test"]), named, tuple(v.strip() for v in variants.split(",")),
                           per_class, seed=seed, progress=progress)
    from clap_edge.core.report import table_dict

    return res.table, {"domains": table_dict(res.table), "int8_agreement_vs_fp32": res.agreement,
                       "failed_images": res.failed}


def _emit(tables, result, out, as_json):
    from clap_edge.core.report import markdown_table, plot_table, write_json

    md = "\n\n".join(f"### {kind}\n\n{markdown_table(t)}" for kind, t in tables.items())
    if out:
        out = Path(out)
        write_json(out / "eval.json", result)
        (out / "eval.md").parent.mkdir(parents=True, exist_ok=True)
        from clap_edge.core.io import atomic_write_text

        atomic_write_text(out / "eval.md", md + "\n")
        for kind, t in tables.items():
            plot_table(t, out / f"eval-{kind}.png")
    click.echo(json.dumps(result, indent=2) if as_json else md)


COMMANDS = [evaluate]
