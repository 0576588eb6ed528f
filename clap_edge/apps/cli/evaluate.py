"""``clap-edge eval``: zero-shot top-1 per domain, CLIP vs CLAP heads, and bundle variants."""

from __future__ import annotations

import json
from pathlib import Path

import click

from clap_edge.apps.cli.checks import (check_bundle_classes, check_model_name, check_output_dir,
                                       check_pretrained_path, dataset_classes, require_extra)


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
              help="what alpha maximises on val: pooled (all domains' images), worst (the worst domain), a "
                   "domain name, or authors (their rule: mean per-domain top-1 of the PC prompts, one alpha for "
                   "every family, on their grid 10^-1.5..10^2 unless --alphas is given).")
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
@click.option("--few-shot", "few_shot", default=None, metavar="K,K,...",
              help="also the authors' few-shot evaluation: a linear probe on K shots per class from every other "
                   "domain, tested on the held-out one, CLIP vs CLAP features (e.g. 1,2,4,8,16).")
@click.option("--shot-draws", type=click.IntRange(min=1), default=3, show_default=True,
              help="few-shot: independent shot draws per K (paired CIs over the test images).")
@click.option("--probe", "probe_method", type=click.Choice(["linear", "prototype"]), default="linear",
              show_default=True, help="few-shot: the authors' Adam-trained linear probe, or class prototypes.")
@click.option("--json", "as_json", is_flag=True, help="print the JSON result.")
def evaluate(dataset, heads, model_name, pretrained, bundles, variants, prompts, alpha, alphas, alpha_objective,
             style_draws, style_vocab, per_class, out, attack, eps, attack_per_class, attack_scores, seed, few_shot,
             shot_draws, probe_method, as_json):
    """Zero-shot top-1 per domain with paired-bootstrap 95% CIs, for a grid of alphas.

    DATASET holds `val/` and `test/` splits of `<domain>/<class>/*` images (as `clap-edge toy
    dataset` writes), or one such tree used as the test split. Heads are evaluated on the
    frozen model for every alpha of --alphas (table, plot, CLAP minus CLIP with paired CIs);
    the reported alpha is chosen on `val/` (never on test) by --alpha-objective unless --alpha
    is given. --few-shot adds the paper's few-shot table (leave one domain out; CLAP features at
    --alpha, else at each head's own alpha; probe settings recorded in the JSON). Bundles are run through the runtime, so fp32 and int8 exports are scored alike.

    \b
    Example:
      clap-edge toy dataset toy-data
      clap-edge eval toy-data --head head.safetensors --prompts C,PC,S --style-vocab toy --alpha-objective worst
      clap-edge eval toy-data --head head.safetensors --few-shot 1,2,4,8,16 --out eval-out
      clap-edge eval toy-data --head head.safetensors --attack fgsm,pgd20,cw20 --out eval-out
    """
    from clap_edge.core.errors import ClapEdgeError

    if not heads and not bundles and not model_name:
        raise ClapEdgeError("nothing to evaluate: pass --head, --model or --bundle")
    if attack and not (heads or model_name):
        raise ClapEdgeError("--attack attacks the model: pass --head (CLAP vs CLIP) or --model (CLIP)")
    if few_shot and not (heads or model_name):
        raise ClapEdgeError("--few-shot needs the model's features: pass --head or --model")
    if heads or model_name:
        require_extra("eval", "train")
    specs = _attack_specs(attack, eps) if attack else None  # bad names fail before any work
    named = _check_inputs(dataset, heads, model_name, pretrained, bundles, out)  # before any model or image
    tables, result = {}, {"dataset": str(dataset)}
    if heads or model_name:
        config = _eval_config(prompts, alpha, alphas, alpha_objective, style_draws, style_vocab, seed)
        tables["model"], result["model"], loaded, loaded_heads = _eval_heads(
            dataset, heads, model_name, pretrained, config, per_class, progress=not as_json)
        if specs:
            tables["attacks"], result["attacks"] = _eval_attacks(
                dataset, loaded, loaded_heads, tables["model"], result["model"]["classes"], specs,
                attack_per_class, attack_scores == "cosine", config, progress=not as_json)
    if few_shot:
        result["few_shot"] = _eval_few_shot(dataset, heads, model_name, pretrained, few_shot, shot_draws,
                                            probe_method, alpha, per_class, seed, progress=not as_json)
    if named:
        tables["bundles"], result["bundles"] = _eval_bundles(dataset, named, variants, per_class, seed,
                                                             progress=not as_json)
    _emit(tables, result, out, as_json)


def _check_inputs(dataset, heads, model_name, pretrained, bundles, out) -> dict[str, str]:
    """Every input of `eval`, checked before a model loads or an image is encoded: the model name, a
    checkpoint path, --out, the dataset's class folders and each bundle's classes against them."""
    from clap_edge.export.bundle import Bundle

    check_model_name(model_name)
    check_pretrained_path(pretrained)
    if out:
        check_output_dir(out)
    test, data_classes = dataset_classes(dataset)
    named = dict(b.split("=", 1) if "=" in b else (Path(b).name, b) for b in bundles)
    for path in named.values():
        with Bundle.open(path) as opened:
            check_bundle_classes(opened.label, opened.class_names, test, data_classes)
    return named


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
    from clap_edge.apps.progress import note, progress_bar
    from clap_edge.head import CLAPHead
    from clap_edge.models import load_model
    from clap_edge.toyworld.world import in_world_order
    from clap_edge.zeroshot import evaluate_folder

    loaded_heads = {Path(h).stem if len(heads) > 1 else "clap": CLAPHead.load(h) for h in heads}
    first = next(iter(loaded_heads.values()), None)
    model_name = model_name or (first.config.model_name if first else None)
    pretrained = pretrained or (first.config.pretrained if first else None)
    note(f"loading {model_name} ({pretrained or 'random init'}) with open_clip ...", enabled=progress)
    loaded = load_model(model_name, pretrained)
    with progress_bar(enabled=progress) as bar:
        res, class_names = evaluate_folder(dataset, loaded, loaded_heads, config, per_class=per_class, progress=bar)
    # domains in the demo's order, so a domain keeps its place and colour from one plot to the next
    res.domains = in_world_order(res.domains)
    res.grid = {key: in_world_order(grid) for key, grid in res.grid.items()}
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


def _eval_few_shot(dataset, heads, model_name, pretrained, shots, draws, method, alpha, per_class, seed, progress):
    from clap_edge.apps.progress import progress_bar
    from clap_edge.core.errors import ClapEdgeError
    from clap_edge.core.probe import ProbeConfig
    from clap_edge.fewshot import FewShotConfig, evaluate_fewshot_folder
    from clap_edge.head import CLAPHead
    from clap_edge.models import load_model

    try:
        ks = tuple(int(k) for k in shots.split(",") if k.strip())
    except ValueError:
        raise ClapEdgeError(f"--few-shot {shots!r}: not a comma list of integers") from None
    config = FewShotConfig(shots=ks, draws=draws, probe=ProbeConfig(method=method, seed=seed), alpha=alpha, seed=seed)
    loaded_heads = {Path(h).stem if len(heads) > 1 else "clap": CLAPHead.load(h) for h in heads}
    first = next(iter(loaded_heads.values()), None)
    loaded = load_model(model_name or first.config.model_name, pretrained or (first.config.pretrained if first
                                                                              else None))
    with progress_bar(enabled=progress) as bar:
        res, _ = evaluate_fewshot_folder(dataset, loaded, loaded_heads, config, per_class=per_class, progress=bar)
    return res.as_dict()


def _eval_bundles(dataset, named, variants, per_class, seed, progress):
    from clap_edge.core.datasets import find_splits
    from clap_edge.apps.accuracy import evaluate_bundles

    res = evaluate_bundles(str(find_splits(dataset)["test"]), named, tuple(v.strip() for v in variants.split(",")),
                           per_class, seed=seed, progress=progress)
    from clap_edge.core.report import table_dict
    from clap_edge.toyworld.world import in_world_order

    res.table = in_world_order(res.table)
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
    few = result.get("few_shot")
    if few:  # after the zero-shot tables
        from clap_edge.core.report import fewshot_markdown

        md += (f"\n\n### few-shot: {few['settings']['probe']['method']} probe, leave one domain out (top-1 %, "
               f"paired 95% CI over test images; mean of {few['settings']['draws']} shot draws)\n\n"
               + fewshot_markdown(few))
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
        if few:
            from clap_edge.core.report import plot_fewshot

            plot_fewshot(few, out / "eval-fewshot.png")
    click.echo(json.dumps(result, indent=2) if as_json else md)


_PLOT_TITLES = {"attacks": "zero-shot top-1 under attack per domain (whiskers: paired bootstrap 95% CI)"}

COMMANDS = [evaluate]
