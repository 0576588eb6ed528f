"""``clap-edge toy``: the toy world (dataset writing and pretraining of the shipped toy CLIP)."""

from __future__ import annotations

import json

import click

DOMAIN_HELP = ("comma list of domains (id, color_shift, background_shift, render_shift, both, style_swap, "
               "style_swap_render).")
ALL_DOMAINS = "id,color_shift,background_shift,render_shift,both,style_swap,style_swap_render"


@click.group("toy")
def toy() -> None:
    """The toy world: shapes (content) under colour, size, background and rendering (style).

    \b
    Example:
      clap-edge toy dataset toy-data --per-class 50
    """


@toy.command("dataset")
@click.argument("root", type=click.Path(file_okay=False))
@click.option("--domains", default=ALL_DOMAINS, show_default=True,
              help=DOMAIN_HELP)
@click.option("--splits", default="val,test", show_default=True, help="comma list of splits (val, test).")
@click.option("--per-class", type=click.IntRange(min=1), default=100, show_default=True, help="images per class, domain and split.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="replace ROOT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="print a JSON summary instead of text.")
def dataset(root, domains, splits, per_class, seed, force, as_json):
    """Write toy-world PNGs as ROOT/<split>/<domain>/<class>/*.png (+ ROOT/classes.txt).

    Each ROOT/<split> is a dataset root with one folder per domain, as `eval` reads it.

    \b
    Example:
      clap-edge toy dataset toy-data --domains id,render_shift --per-class 50
    """
    from clap_edge.apps.progress import progress_bar
    from clap_edge.toyworld.dataset import write_dataset

    domain_list, split_list = _split_list(domains), _split_list(splits)
    with progress_bar(enabled=not as_json) as progress:
        progress("rendering", 0, len(domain_list) * len(split_list))
        info = write_dataset(root, domain_list, split_list, per_class, seed, overwrite=force,
                             progress=lambda split, domain: progress("rendering"))
    n = per_class * len(info.classes)
    if as_json:
        click.echo(json.dumps({**vars(info), "images_per_domain": n}, indent=2))
        return
    click.echo(f"wrote {root}: {len(split_list)} split(s) x {len(domain_list)} domain(s) x {n} images "
               f"({', '.join(str(info.split_root(s)) for s in split_list)})")


@toy.command("pretrain")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="where to write the .safetensors weights.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=None, help="training steps (default: PretrainConfig.steps).")
@click.option("--batch-size", type=click.IntRange(min=2), default=None, help="images per step (default: PretrainConfig.batch_size).")
@click.option("--lr", type=float, default=None, help="peak AdamW learning rate.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="torch CPU threads.")
@click.option("--eval-per-domain", type=click.IntRange(min=0), default=800, show_default=True,
              help="test images per domain for the zero-shot table (0: skip).")
@click.option("--json", "as_json", is_flag=True, help="print a JSON summary instead of text.")
def pretrain(out, seed, steps, batch_size, lr, threads, eval_per_domain, as_json):
    """Pretrain the toy CLIP (clap-edge-toy) contrastively on generated images and captions.

    With the defaults this reproduces the shipped `clap-edge-toy/toyworld` weights
    (about 11 minutes of CPU time on one core; the figures are in clap_edge.toyworld.pretrain).

    \b
    Example:
      clap-edge toy pretrain --out toy.safetensors --steps 200
    """
    import dataclasses

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from clap_edge.toyworld import pretrain as pt

    overrides = {k: v for k, v in (("steps", steps), ("batch_size", batch_size), ("lr", lr)) if v is not None}
    config = dataclasses.replace(pt.PretrainConfig(), seed=seed, threads=threads, **overrides)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), disable=as_json, transient=True) as bar:
        task = bar.add_task("pretraining", total=config.steps, loss=float("nan"))
        result = pt.pretrain(config, progress=lambda s, loss: bar.update(task, advance=1, loss=loss))
    path = pt.save_weights(result.model, out, config)
    summary = {"out": str(path), "seconds": round(result.seconds, 1), "cpu_seconds": round(result.cpu_seconds, 1),
               "config": dataclasses.asdict(config),
               "first_loss": result.losses[0], "final_loss": sum(result.losses[-50:]) / len(result.losses[-50:])}
    if eval_per_domain > 0:
        summary["zero_shot_top1"] = _evaluate(result.model, config, eval_per_domain)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"wrote {path} after {config.steps} steps in {result.seconds:.0f}s "
               f"({result.cpu_seconds:.0f}s CPU; loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f})")
    for domain, acc in summary.get("zero_shot_top1", {}).items():
        click.echo(f"  zero-shot top-1 ({pt.DEFAULT_PROMPT!r} prompt, test) {domain:>16}: {acc:5.1f}%")


def _evaluate(model, config, n: int) -> dict[str, float]:
    import open_clip

    from clap_edge.toyworld import pretrain as pt

    tokenizer = open_clip.get_tokenizer(config.model_name)
    cfg = open_clip.get_model_preprocess_cfg(model)
    return {d: round(a, 2) for d, a in pt.evaluate_domains(model, tokenizer, cfg, n=n, seed=config.seed).items()}


def _split_list(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise click.BadParameter("empty list")
    return items


COMMANDS = [toy]
