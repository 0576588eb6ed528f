"""``clap-edge adapt``: new or sharper classes from a few photos per class, on the device (no torch)."""

from __future__ import annotations

import json

import click


@click.command("adapt")
@click.argument("bundle", type=click.Path(exists=True))
@click.option("--shots", "shots_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="DIR/<class>/*.jpg: a few photos per class (classes the bundle has, or new ones).")
@click.option("--method", type=click.Choice(["linear", "prototype"]), default="linear", show_default=True,
              help="linear: the CLAP authors' few-shot probe (Adam lr 0.005, up to 1000 epochs, with a bias); "
                   "prototype: each class's mean embedding.")
@click.option("--blend", type=click.FloatRange(0.0, 1.0), default=1.0, show_default=True,
              help="weight of the few-shot logits; the rest stays on the bundle's zero-shot classes (needs every "
                   "class in the bundle).")
@click.option("--seed", type=int, default=0, show_default=True, help="probe init, batch order and held-out draw.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="write the adapted bundle here.")
@click.option("--in-place", is_flag=True, help="change BUNDLE itself (a directory bundle).")
@click.option("--key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="private key PEM: sign the new bundle (without it a signature is dropped, with a warning).")
@click.option("--backend", default="auto", show_default=True, help="runtime backend that computes the embeddings.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="backend intra-op threads.")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON.")
def adapt(bundle, shots_dir, method, blend, seed, out, in_place, key, backend, threads, as_json):
    """Fit BUNDLE's classes to a few labelled photos: the bundle's own model embeds them, a
    probe is fitted in numpy, and the result becomes the class matrix (and bias) of a new
    bundle. The classes are the folders of --shots (bundle classes without a folder are
    dropped). A held-out check (a fifth of each class's shots left out of one extra fit) is
    printed beside the bundle's zero-shot answer on the same shots. Exit 2 with one line for an
    empty class folder, a file that is not an image, an unreadable image or a single class.

    \b
    Example:
      clap-edge adapt bundle/ --shots shots/ --out bundle-adapted --key signer.pem
      clap-edge classify bundle-adapted/ photo.jpg
    """
    from clap_edge.runtime.adapt import AdaptConfig, adapt_bundle

    config = AdaptConfig(method=method, blend=blend, seed=seed, backend=backend, threads=threads)
    say = (lambda line: None) if as_json else (lambda line: click.echo(line, err=True))
    report = adapt_bundle(bundle, shots_dir, out, in_place, key, config, say=say)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    check = report["held_out_check"]
    click.echo(f"adapted {report['out']}: {len(report['classes'])} classes "
               f"({', '.join(report['classes'])}), {method} probe, blend {blend:g}, seed {seed}"
               + (f"; new: {', '.join(report['new_classes'])}" if report["new_classes"] else "")
               + (f"; dropped: {', '.join(report['dropped_classes'])}" if report["dropped_classes"] else ""))
    if "adapted_top1" in check:
        zs = (f", bundle before (zero-shot) {check['zero_shot_top1']:.1f}% on {check['zero_shot_shots']} of them"
              if "zero_shot_top1" in check else "")
        click.echo(f"held-out check: {check['shots']} shots left out of the fit: adapted {check['adapted_top1']:.1f}%{zs}")
    else:
        click.echo(f"held-out check: {check['note']}")
    click.echo(f"time: {report['timings_s']['total_s']:.2f} s (embedding {report['timings_s']['embed_s']:.2f} s, "
               f"fit {report['timings_s']['fit_s']:.2f} s)")


COMMANDS = [adapt]
