"""``clap-edge build-engine``: compile a bundle's model into a TensorRT or AOTInductor engine in BUNDLE/engines/."""

from __future__ import annotations

import json

import click

from clap_edge.core.errors import ClapEdgeError


def _batch(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int, int]:
    from clap_edge.export.bundle.engines import parse_batch_profile

    try:
        return parse_batch_profile(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@click.command("build-engine")
@click.argument("bundle", type=click.Path(exists=True))
@click.option("--engine", type=click.Choice(["tensorrt", "aoti"]), required=True, help="Engine to build.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8"]), default="fp32", show_default=True,
              help="fp16/bf16 keep LayerNorm in fp32; int8 is TensorRT from model.qdq.onnx.")
@click.option("--batch", default="1,8,64", show_default=True, callback=_batch,
              help="Batch profile MIN,OPT,MAX (larger batches run in MAX-sized chunks).")
@click.option("--workspace-mb", type=click.IntRange(min=64), default=4096, show_default=True,
              help="TensorRT builder workspace limit.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="TensorRT timing cache file: reused if present, saved after the build.")
@click.option("--device", default=None, help="cpu or cuda[:index] (default: cuda for tensorrt; aoti: cuda if "
                                             "torch sees a GPU, else cpu).")
@click.option("--tolerance", type=float, default=None,
              help="Max |dlogit| vs ONNX Runtime before the build fails (default per precision).")
@click.option("--json", "as_json", is_flag=True, help="Print the engine's sidecar as JSON.")
def build_engine(bundle, engine, precision, batch, workspace_mb, timing_cache, device, tolerance, as_json):
    """Build a compiled engine for this machine into BUNDLE/engines/ (engine file + JSON sidecar, listed in
    the manifest), after checking its logits against ONNX Runtime on the bundle's calibration images.

    A bundle can hold engines for several GPUs and precisions; the tensorrt and aoti backends pick the one
    built for the device and library version they run on.

    \b
    Example:
      clap-edge build-engine my-bundle --engine aoti --device cpu
      clap-edge build-engine my-bundle --engine tensorrt --precision fp16 --batch 1,8,64 --timing-cache trt.cache
    """
    import sys

    from clap_edge.apps.engine_build import EngineBuildConfig, build_engine as build

    if device is not None and not (device == "cpu" or device.split(":")[0] == "cuda"):
        raise ClapEdgeError(f"--device {device!r}: expected cpu or cuda[:index]")

    def say(message: str) -> None:
        click.echo(message, err=True)

    sidecar = build(EngineBuildConfig(bundle=bundle, engine=engine, precision=precision, batch=batch,
                                      workspace_mb=workspace_mb, timing_cache=timing_cache, device=device,
                                      tolerance=tolerance, progress=None if as_json else say))
    if as_json:
        click.echo(json.dumps(sidecar.to_json(), indent=2))
    else:
        parity = sidecar.parity
        click.echo(f"{sidecar.file}: {sidecar.device.describe()}, {sidecar.library} {sidecar.library_version}, "
                   f"{sidecar.precision}, batch {list(sidecar.batch)}, built in {sidecar.build_seconds:g} s; max |dlogit| "
                   f"{parity['max_abs_logit_diff_vs_onnxruntime']:.3g}, top-1 agreement "
                   f"{parity['top1_agreement_vs_onnxruntime']:.1%} vs ONNX Runtime", file=sys.stdout)


COMMANDS = [build_engine]
