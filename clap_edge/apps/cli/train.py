"""``clap-edge train``: train a CLAP head for a list of classes on a frozen open_clip model."""

from __future__ import annotations

import json

import click

from clap_edge.apps.cli.checks import (check_model_name, check_output_dir, check_output_file, check_pretrained_path,
                                       require_extra)


@click.command("train")
@click.option("--model", "model_name", required=True, help="open_clip model name, e.g. ViT-B-32 or clap-edge-tiny.")
@click.option("--pretrained", default=None, help="pretrained tag (openai, laion2b_s34b_b79k, ...) or checkpoint path.")
@click.option("--classes", required=True, help="class names: a text file (one per line), a dataset folder or a,b,c.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="where to write HEAD.safetensors.")
@click.option("--steps", type=int, default=8000, show_default=True, help="maximum training steps.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="prompts per step (>= #classes advised).")
@click.option("--lr", type=float, default=1e-4, show_default=True, help="Adam learning rate.")
@click.option("--tau-text", type=float, default=0.5, show_default=True, help="NT-Xent temperature, prompt vs view.")
@click.option("--tau-content", type=float, default=1.0, show_default=True, help="NT-Xent temperature, view vs class.")
@click.option("--latent-dim", type=int, default=256, show_default=True, help="hidden width h of the head.")
@click.option("--noise-ctx", type=int, default=4, show_default=True, help="noise-context tokens per view (0: none).")
@click.option("--noise-pool", type=int, default=4, show_default=True,
              help="pre-encoded noise draws K per augmented view (more: more noise diversity, longer encoding).")
@click.option("--batching", type=click.Choice(["balanced", "shuffle"]), default="balanced", show_default=True,
              help="balanced: one prompt of each class in turn; shuffle: the authors' shuffled loader.")
@click.option("--noise-sharing", type=click.Choice(["text", "batch"]), default="text", show_default=True,
              help="text: noise drawn per view text (K per text); batch: the authors' one draw and position per "
                   "step (from a pool of --noise-pool draws: use a large pool, e.g. 256).")
@click.option("--keep", type=click.Choice(["final", "best"]), default="final", show_default=True,
              help="final weights, or those at the end of the best loss window (the authors' checkpoint).")
@click.option("--reorder-article/--no-reorder-article", default=True, show_default=True,
              help="reordered view 'a dog in a sketch style' (the authors') or 'a dog in sketch style'.")
@click.option("--no-early-stop", is_flag=True, help="always run --steps steps.")
@click.option("--vocab", type=click.Path(exists=True, dir_okay=False), default=None,
              help="prompt vocabulary (TOML or YAML: image_types, sizes, art_styles, colors).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="keep encoded texts on disk here; a rerun with the same model and settings skips encoding.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="print a JSON summary instead of text.")
def train(model_name, pretrained, classes, out, steps, batch_size, lr, tau_text, tau_content, latent_dim, noise_ctx,
          noise_pool, batching, noise_sharing, keep, reorder_article, no_early_stop, vocab, cache_dir, seed, device,
          as_json):
    """Train a CLAP head (text only) for CLASSES on a frozen open_clip model and save it as safetensors.

    The frozen encoder runs once over every prompt and class name and over the augmented
    views the seeded schedule draws; the training loop then runs only the head.

    \b
    Example:
      clap-edge train --model clap-edge-tiny --classes dog,cat,house --out head.safetensors --steps 500
    """
    from clap_edge.apps.progress import note, progress_bar
    from clap_edge.prompts import PromptVocab, load_class_names

    # every input is checked before torch / open_clip are imported (6+ CPU-seconds) or a model is built
    require_extra("train", "train")
    _check_numbers(steps, batch_size, latent_dim, noise_ctx, noise_pool)
    check_model_name(model_name)
    check_pretrained_path(pretrained)
    check_output_file(out)
    if cache_dir:
        check_output_dir(cache_dir, "--cache-dir")
    class_names = load_class_names(classes)
    prompt_vocab = PromptVocab.from_file(vocab) if vocab else PromptVocab()
    note(f"loading {model_name} ({pretrained or 'random init'}) with open_clip ...", enabled=not as_json)
    from clap_edge.models import load_model
    from clap_edge.prompts import AugmentConfig
    from clap_edge.train import TrainConfig, result_summary, train_head

    config = TrainConfig(
        steps=steps, batch_size=batch_size, lr=lr, tau_text=tau_text, tau_content=tau_content,
        latent_dim=latent_dim, noise_ctx=noise_ctx, noise_pool=noise_pool, early_stop=not no_early_stop,
        batching=batching, noise_sharing=noise_sharing, keep=keep, augment=AugmentConfig(reorder_article=reorder_article),
        seed=seed, device=device, cache_dir=cache_dir,
        vocab=prompt_vocab,
    )
    loaded = load_model(model_name, pretrained, device=device)
    with progress_bar(enabled=not as_json, transient=False) as config.progress:
        head, result = train_head(loaded, class_names, config)
    path = head.save(out)
    summary = {"out": str(path), "model": model_name, "pretrained": pretrained, "classes": head.config.class_names,
               **result_summary(result)}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"wrote {path}: {len(head.config.class_names)} classes, {result.steps_run} steps "
               f"({'early stop' if result.stopped_early else 'all steps'}), final loss {result.final_loss:.4f}, "
               f"{result.encoded_texts} texts encoded in {result.encode_seconds:.1f}s, "
               f"head loop {result.loop_seconds:.1f}s")


def _check_numbers(steps: int, batch_size: int, latent_dim: int, noise_ctx: int, noise_pool: int) -> None:
    for name, value, low in (("--steps", steps, 1), ("--batch-size", batch_size, 2), ("--latent-dim", latent_dim, 1),
                             ("--noise-ctx", noise_ctx, 0), ("--noise-pool", noise_pool, 1)):
        if value < low:
            raise click.BadParameter(f"must be >= {low}, got {value}", param_hint=name)


COMMANDS = [train]
