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
@click.option("--prompts", default="C", show_default=True,
              help="prompt families: C, CP, PC, NC, S (style-laden, --style-draws per class) (comma list).")
@click.option("--alpha", type=float, default=None, help="use this alpha; default: chosen on the val/ split.")
@click.option("--alphas", default=",".join(str(a) for a in (0.0, 0.02, 0.056, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)),
              show_default=True, help="alpha grid: reported on test, searched on val.")
@click.option("--alpha-objective", default="pooled", show_default=True,
              help="what alpha maximises on val: pooled (all domains' images), worst (the worst domain) or a "
                   "domain name.")
@click.option("--style-draws", type=click.IntRange(min=1), default=5, show_default=True,
              help="S prompts per class; each draw is scored as its own classifier (per-draw accuracy).")
@click.option("--style-vocab", default=None,
              help="vocabulary of the S prompts: a TOML/YAML file, or 'toy' (default: CLAP.md's words).")
@click.option("--per-class", type=int, default=None, help="use at most N images per class and domain.")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="write eval.md, eval.json and eval.png here.")
@click.option("--attack", "attack", default=None,
              help="white-box attacks on CLIP and each head at its alpha: fgsm, pgd20, cw20 (comma list; the "
                   "authors' steps and step sizes; needs the [robust] extra).")
@click.option("--eps", type=float, default=0.031, show_default=True,
              help="L-inf attack budget in pixel units ([0, 1]; the authors' 0.031 is about 8/255).")
@click.option("--attack-per-class", type=click.IntRange(min=1), default=20, show_default=True,
              help="attack at most N images per class and domain (PGD-20 costs 21 forward+backward passes each).")
@click.option("--attack-scores", type=click.Choice(["cosine", "logits"]), default="cosine", show_default=True,
              help="what the attack's loss reads: cosine similarities (the authors') or the scaled logits.")
@click.option("--seed", type=int, default=0, show_default=True, help="bootstrap, noise and attack random-start seed.")
@click.option("--json", "as_json", is_flag=True, help="print the JSON result.")
def evaluate(dataset, heads, model_name, pretrained, bundles, variants, prompts, alpha, alphas, alpha_objective,
             style_draws, style_vocab, per_class, out, attack, eps, attack_per_class, attack_scores, seed, as_json):
    """Zero-shot top-1 per domain with paired-bootstrap 95% CIs, for a grid of alphas.

    DATASET holds `val/` and `test/` splits of `<domain>/<class>/*` images (as `clap-edge toy
    dataset` writes), or one such tree used as the test split. Heads are evaluated on the
    frozen model for every alpha of --alphas (table, plot, CLAP minus CLIP with paired CIs);
    the reported alpha is chosen on `val/` (never on test) by --alpha-objective unless --alpha
    is given. Bundles are run through the runtime, so fp32 and int8 exports are scored alike.

    \b
    Example:
      clap-edge toy dataset toy-data
      clap-edge eval toy-data --head head.safetensors --prompts C,PC,S --style-vocab toy --alpha-objective worst
      clap-edge eval toy-data --head head.safetensors --attack fgsm,pgd20,cw20 --out eval-out
    """
    from clap_edge.core.errors import ClapEdgeError

    if not heads and not bundles and not model_name:
        raise ClapEdgeError("nothing to evaluate: pass --head, --model or --bundle")
    if attack and not (heads or model_name):
        raise ClapEdgeError("--attack attacks the model: pass --head (CLAP vs CLIP) or --model (CLIP)")
    specs = _attack_specs(attack, eps) if attack else None  # bad names fail before any work
    tables, result = {}, {"dataset": str(dataset)}
    if heads or model_name:
        config = _eval_config(prompts, alpha, alphas, alpha_objective, style_draws, style_vocab, seed)
        tables["model"], result["model"], loaded, loaded_heads = _eval_heads(
            dataset, heads, model_name, pretrained, config, per_class, progress=not as_json)
        if specs:
            tables["attacks"], result["attacks"] = _eval_attacks(
                dataset, loaded, loaded_heads, tables["model"], result["model"]["classes"], specs,
                attack_per_class, attack_scores == "cosine", config, progress=not as_json)
    if bundles:
        tables["bundles"], result["bundles"] = _eval_bundles(dataset, bundles, variants, per_class, seed,
                                                             progress=not as_json)
    _emit(tables, result, out, as_json)


def _eval_config(prompts, alpha, alphas, alpha_objective, style_draws, style_vocab, seed):
    from clap_edge.core.errors import ClapEdgeError
    from clap_edge.prompts import PromptVocab
    from clap_edge.zeroshot import EvalConfig

    try:
        grid = tuple(float(a) for a in alphas.split(",") if a.strip())
    except ValueError:
        raise ClapEdgeError(f"--alphas {alphas!r}: not a comma list of numbers") from None
    if style_vocab == "toy":
        from clap_edge.toyworld.world import toy_prompt_vocab

        vocab = toy_prompt_vocab()
    else:
        vocab = PromptVocab.from_file(style_vocab) if style_vocab else PromptVocab()
    return EvalConfig(prompt_formats=tuple(p.strip() for p in prompts.split(",")), alpha=alpha, alphas=grid,
                      alpha_objective=alpha_objective, style_draws=style_draws, style_vocab=vocab, seed=seed)


def _eval_heads(dataset, heads, model_name, pretrained, config, per_class, progress):
    from clap_edge.apps.progress import progress_bar
    from clap_edge.head import CLAPHead
    from clap_edge.models import load_model
    from clap_edge.zeroshot import evaluate_folder

    loaded_heads = {Path(h).stem if len(heads) > 1 else "clap": CLAPHead.load(h) for h in heads}
    first = next(iter(loaded_heads.values()), None)
    model_name = model_name or (first.config.model_name if first else None)
    pretrained = pretrained or (first.config.pretrained if first else None)
    loaded = load_model(model_name, pretrained)
    with progress_bar(enabled=progress) as bar:
        res, class_names = evaluate_folder(dataset, loaded, loaded_heads, config, per_class=per_class, progress=bar)
    return res, {"model_name": model_name, "pretrained": pretrained, "classes": class_names, **res.as_dict()}, \
        loaded, loaded_heads


def _attack_specs(attack, eps):
    from clap_edge.attacks import parse_attacks

    return parse_attacks(attack, eps)


def _eval_attacks(dataset, loaded, heads, res, class_names, specs, per_class, cosine, config, progress):
    """CLIP and every head (at its chosen alpha) under each attack, on the test split's first images per class."""
    from clap_edge.apps.progress import progress_bar
    from clap_edge.attacks import build_models, evaluate_attacks
    from clap_edge.core.datasets import find_splits, scan_domains
    from clap_edge.core.preprocess import PreprocessCfg
    from clap_edge.zeroshot import PROMPT_FORMATS

    # The attacked classifier's prompts: the first plain family asked for (the authors attack with C).
    family = next((f for f in config.prompt_formats if f in ("C", "CP", "PC")), "C")
    alphas = {name: res.alphas.get(f"{name}/{family}", next(a for k, a in res.alphas.items()
                                                            if k.startswith(f"{name}/"))) for name in heads}
    _, domains = scan_domains(find_splits(dataset)["test"], class_names)
    domains = {d: images.head(per_class) for d, images in domains.items()}
    models = build_models(loaded, class_names, heads, alphas, PROMPT_FORMATS[family], cosine)
    with progress_bar(enabled=progress) as bar:
        robust = evaluate_attacks(models, domains, PreprocessCfg.from_open_clip(loaded.preprocess_cfg), specs,
                                  len(class_names), alphas, family, config.n_boot, config.seed, progress=bar)
    return robust.table, {**robust.as_dict(), "per_class": per_class}


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
    from clap_edge.core.report import alpha_grid_markdown, markdown_table, plot_alpha_curves, plot_table, write_json

    res = tables.get("model")
    if res is not None:  # the model table at the chosen alphas, then one alpha grid per head and family
        tables["model"] = res.domains
    md = "\n\n".join(f"### {kind}\n\n{markdown_table(t)}" for kind, t in tables.items() if kind != "attacks")
    if "attacks" in tables:
        from clap_edge.apps.robustness import attacks_markdown

        md += "\n\n" + attacks_markdown(result["attacks"], tables["attacks"])
    if res is not None and res.grid:
        md += "".join(f"\n\n### {key}: top-1 per alpha (minus CLIP, paired 95% CI); chosen alpha in bold "
                      f"({res.objective} validation objective)\n\n{alpha_grid_markdown(grid, res.alphas.get(key))}"
                      for key, grid in res.grid.items())
    if out:
        out = Path(out)
        write_json(out / "eval.json", result)
        (out / "eval.md").parent.mkdir(parents=True, exist_ok=True)
        from clap_edge.core.io import atomic_write_text

        atomic_write_text(out / "eval.md", md + "\n")
        for kind, t in tables.items():
            plot_table(t, out / f"eval-{kind}.png", title=_PLOT_TITLES.get(kind, "zero-shot top-1 per domain"))
        if res is not None and res.grid:
            plot_alpha_curves(res.grid, out / "eval-alpha.png", res.alphas)
    click.echo(json.dumps(result, indent=2) if as_json else md)


_PLOT_TITLES = {"attacks": "zero-shot top-1 under attack per domain (whiskers: paired bootstrap 95% CI)"}

COMMANDS = [evaluate]
