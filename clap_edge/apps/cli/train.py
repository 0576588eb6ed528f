"""``clap-edge train``: train a CLAP head (text) or an Im.Aug head (images) on a frozen open_clip model."""

from __future__ import annotations

import json

import click

from clap_edge.apps.cli.checks import (check_model_name, check_output_dir, check_output_file, check_pretrained_path,
                                       require_extra)


IMAUG_ONLY = ("images", "tau_image", "crop_scale", "color_jitter", "mask", "perspective", "hflip", "official_out")
CLAP_ONLY = ("tau_text", "tau_content", "noise_ctx", "noise_pool", "noise_sharing", "reorder_article", "vocab",
             "cache_dir")


@click.command("train")
@click.option("--method", type=click.Choice(["clap", "imaug"]), default="clap", show_default=True,
              help="clap: the text-trained head (network_beta); imaug: the authors' image-augmentation head "
                   "(network_psi), trained on --images.")
@click.option("--model", "model_name", required=True, help="open_clip model name, e.g. ViT-B-32 or clap-edge-tiny.")
@click.option("--pretrained", default=None, help="pretrained tag (openai, laion2b_s34b_b79k, ...) or checkpoint path.")
@click.option("--classes", default=None,
              help="class names: a text file (one per line), a dataset folder or a,b,c (clap: required; imaug: "
                   "default the --images folders, or every toy class).")
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
@click.option("--batching", type=click.Choice(["balanced", "shuffle"]), default=None,
              help="balanced: one item of each class in turn; shuffle: the authors' shuffled loader "
                   "[default: balanced for clap, shuffle for imaug].")
@click.option("--noise-sharing", type=click.Choice(["text", "batch", "batch-pool"]), default="text",
              show_default=True,
              help="text: noise drawn per view text (K = --noise-pool per text); batch: the authors' fresh draw and "
                   "position every step, shared by the batch; batch-pool: one shared draw per step from a pool of "
                   "--noise-pool draws (the older approximation).")
@click.option("--keep", type=click.Choice(["final", "best"]), default=None,
              help="final weights, or those at the end of the best loss window (the authors' checkpoint) "
                   "[default: final for clap, best for imaug].")
@click.option("--images", default=None,
              help="imaug: a folder with one folder of images per class (e.g. synthesised ones; <class>/<prompt>/"
                   "*.png works), or 'toy' for toy images rendered from the toy template prompts.")
@click.option("--tau-image", type=float, default=0.5, show_default=True, help="imaug: NT-Xent temperature.")
@click.option("--crop-scale", default="0.64,1.0", show_default=True, help="imaug: random resized crop scale MIN,MAX.")
@click.option("--color-jitter", default="0.5,0.3", show_default=True, help="imaug: ColorJitter BRIGHTNESS,HUE.")
@click.option("--mask", default="0.0,0.25,8,16", show_default=True,
              help="imaug: random block mask P,RATIO,K1,K2: with probability P, a KxK grid (K in [K1,K2)) and up to "
                   "RATIO of its blocks set to black (the authors' P = 0: off).")
@click.option("--perspective", type=float, default=0.0, show_default=True,
              help="imaug: random perspective probability (distortion 0.5).")
@click.option("--hflip", type=float, default=0.0, show_default=True, help="imaug: horizontal flip probability.")
@click.option("--official-out", type=click.Path(dir_okay=False), default=None,
              help="also write the head in the authors' checkpoint layout (.pth; network_psi for imaug, "
                   "network_beta for clap), as CLAPHead.from_official_checkpoint reads it.")
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
@click.pass_context
def train(ctx, method, model_name, pretrained, classes, out, steps, batch_size, lr, tau_text, tau_content, latent_dim,
          noise_ctx, noise_pool, batching, noise_sharing, keep, images, tau_image, crop_scale, color_jitter, mask,
          perspective, hflip, official_out, reorder_article, no_early_stop, vocab, cache_dir, seed, device, as_json):
    """Train a CLAP head (text only) for CLASSES, or an Im.Aug head on images, and save it as safetensors.

    clap: the frozen encoder runs once over every prompt and class name and over the augmented
    views the seeded schedule draws; the training loop then runs only the head. imaug: the
    authors' Im.Aug (their network_psi) on --images, with their augmentations as defaults;
    every setting is recorded in the head file.

    \b
    Example:
      clap-edge train --model clap-edge-tiny --classes dog,cat,house --out head.safetensors --steps 500
      clap-edge train --method imaug --model clap-edge-toy --pretrained toyworld --images toy --out psi.safetensors
    """
    from clap_edge.apps.progress import note, progress_bar

    # every input is checked before torch / open_clip are imported (6+ CPU-seconds) or a model is built
    require_extra("train", "train")
    _check_method_options(ctx, method)
    _check_numbers(steps, batch_size, latent_dim, noise_ctx, noise_pool)
    check_model_name(model_name)
    check_pretrained_path(pretrained)
    check_output_file(out)
    if cache_dir:
        check_output_dir(cache_dir, "--cache-dir")
    _check_classes(method, classes)
    note(f"loading {model_name} ({pretrained or 'random init'}) with open_clip ...", enabled=not as_json)
    from clap_edge.models import load_model
    from clap_edge.train import result_summary

    common = dict(steps=steps, batch_size=batch_size, lr=lr, latent_dim=latent_dim, early_stop=not no_early_stop,
                  seed=seed, device=device, batching=batching or ("shuffle" if method == "imaug" else "balanced"),
                  keep=keep or ("best" if method == "imaug" else "final"))
    if method == "imaug":
        run = _imaug_run(classes, images, tau_image, crop_scale, color_jitter, mask, perspective, hflip, common)
    else:
        run = _clap_run(classes, tau_text, tau_content, noise_ctx, noise_pool, noise_sharing, reorder_article, vocab,
                        cache_dir, common)
    loaded = load_model(model_name, pretrained, device=device)
    with progress_bar(enabled=not as_json, transient=False) as progress:
        head, result = run(loaded, progress)
    path = head.save(out)
    if official_out:
        head.save_official(official_out, network="psi" if method == "imaug" else "beta")
    summary = {"out": str(path), "method": method, "model": model_name, "pretrained": pretrained,
               "classes": head.config.class_names, **({"official_out": official_out} if official_out else {}),
               **result_summary(result)}
    if method == "imaug":
        summary["encoded_images"] = summary.pop("encoded_texts")
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"wrote {path}: {len(head.config.class_names)} classes, {result.steps_run} steps "
               f"({'early stop' if result.stopped_early else 'all steps'}), final loss {result.final_loss:.4f}, "
               f"{result.encoded_texts} {'images' if method == 'imaug' else 'texts'} encoded in "
               f"{result.encode_seconds:.1f}s, "
               f"head loop {result.loop_seconds:.1f}s")


def _clap_run(classes, tau_text, tau_content, noise_ctx, noise_pool, noise_sharing, reorder_article, vocab, cache_dir,
              common):
    from clap_edge.prompts import AugmentConfig, PromptVocab, load_class_names
    from clap_edge.train import TrainConfig, train_head

    if classes is None:
        raise click.UsageError("--classes is required with --method clap")
    class_names = load_class_names(classes)
    config = TrainConfig(tau_text=tau_text, tau_content=tau_content, noise_ctx=noise_ctx, noise_pool=noise_pool,
                         noise_sharing=noise_sharing, augment=AugmentConfig(reorder_article=reorder_article),
                         cache_dir=cache_dir, vocab=PromptVocab.from_file(vocab) if vocab else PromptVocab(), **common)

    def run(loaded, progress):
        config.progress = progress
        return train_head(loaded, class_names, config)
    return run


def _imaug_run(classes, images, tau_image, crop_scale, color_jitter, mask, perspective, hflip, common):
    from clap_edge.imaug import ImAugConfig, ImageSet, train_imaug_head
    from clap_edge.prompts import load_class_names

    if images is None:
        raise click.UsageError("--method imaug needs --images DIR (one folder of images per class) or --images toy")
    class_names = load_class_names(classes) if classes else None
    try:
        config = ImAugConfig(tau=tau_image, crop_scale=_numbers(crop_scale, "--crop-scale", 2),
                             brightness=_numbers(color_jitter, "--color-jitter", 2)[0],
                             hue=_numbers(color_jitter, "--color-jitter", 2)[1],
                             mask=_numbers(mask, "--mask", 4, ints=(2, 3)), perspective=perspective, hflip=hflip,
                             **common)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    data = (ImageSet.from_toy(class_names, seed=common["seed"]) if images == "toy"
            else ImageSet.from_folder(images, class_names))

    def run(loaded, progress):
        config.progress = progress
        return train_imaug_head(loaded, data, config)
    return run


def _check_classes(method: str, classes: str | None) -> None:
    """The class list is read (and refused) before the slow imports; the run reads it again, which is cheap."""
    from clap_edge.prompts import load_class_names

    if classes is None and method == "clap":
        raise click.UsageError("--classes is required with --method clap")
    if classes is not None:
        load_class_names(classes)


def _numbers(text: str, option: str, count: int, ints: tuple[int, ...] = ()) -> tuple:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma list of numbers", param_hint=option) from None
    if len(values) != count:
        raise click.BadParameter(f"needs {count} comma-separated numbers, got {len(values)}", param_hint=option)
    return tuple(int(v) if i in ints else v for i, v in enumerate(values))


def _check_method_options(ctx: click.Context, method: str) -> None:
    """An option of the other method given on the command line is an error, not silently ignored."""
    from click.core import ParameterSource

    other = CLAP_ONLY if method == "imaug" else IMAUG_ONLY
    given = [n for n in other if ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise click.UsageError(f"{flag} does not apply to --method {method}")


def _check_numbers(steps: int, batch_size: int, latent_dim: int, noise_ctx: int, noise_pool: int) -> None:
    for name, value, low in (("--steps", steps, 1), ("--batch-size", batch_size, 2), ("--latent-dim", latent_dim, 1),
                             ("--noise-ctx", noise_ctx, 0), ("--noise-pool", noise_pool, 1)):
        if value < low:
            raise click.BadParameter(f"must be >= {low}, got {value}", param_hint=name)


COMMANDS = [train]
