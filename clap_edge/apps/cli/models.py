"""``clap-edge models``: the model names ``--model`` accepts and their pretrained tags."""

from __future__ import annotations

import json

import click


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help='print {"model": ["tag", ...]} as JSON.')
def models(as_json):
    """List every open_clip model name (ours included) with its known pretrained tags.

    A model without tags is random init unless --pretrained names a local checkpoint.

    \b
    Example:
      clap-edge models | grep ViT-B-32
    """
    from clap_edge.apps.cli.checks import require_extra
    from clap_edge.apps.progress import note

    require_extra("models", "train")
    # the tags live in open_clip, whose import pulls in torch and torchvision: seconds with nothing to show
    note("reading open_clip's models and pretrained tags (imports torch: a few seconds) ...")
    import open_clip

    from clap_edge.models import SHIPPED_WEIGHTS, list_models

    tags = {name: list(open_clip.list_pretrained_tags_by_model(name)) for name in list_models()}
    for name, tag in SHIPPED_WEIGHTS:
        tags[name].append(tag)
    if as_json:
        click.echo(json.dumps(tags, indent=2))
        return
    for name, known in tags.items():
        click.echo(f"{name}\t{', '.join(known) or '-'}")


COMMANDS = [models]
