"""``clap-edge serve`` (a bundle behind HTTP on Ray Serve) and ``clap-edge export-triton`` (a Triton model repository)."""

from __future__ import annotations

import json

import click


@click.command("serve")
@click.argument("bundle", type=click.Path(exists=True))
@click.option("--backend", default="auto", show_default=True, help="runtime backend of every replica.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="backend intra-op threads per replica.")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
              help="replicas (one bundle load each), spread over the Ray cluster.")
@click.option("--replica-cpus", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Ray CPUs reserved per replica.")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="largest batch one model call gets (@serve.batch).")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="how long a replica waits to fill a batch.")
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP address (0.0.0.0 to listen on all).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="HTTP port.")
@click.option("--address", default=None, help="a running Ray cluster (e.g. ray://head:10001); default: start one here.")
@click.option("--num-cpus", type=click.IntRange(min=1), default=None,
              help="CPUs of the local Ray cluster (default: enough for the replicas, at least 2).")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
              help="Prometheus port of the local Ray node (Ray Serve's metrics).")
@click.option("--access-log", is_flag=True, help="log one line per request.")
@click.option("--trusted-key", "trusted_keys", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="public key PEM; the bundle must be signed by one of these (repeatable; `clap-edge sign`).")
@click.option("--max-body-mb", type=click.FloatRange(min=0, min_open=True), default=64.0, show_default=True,
              help="larger request bodies answer 413.")
def serve(bundle, backend, threads, replicas, replica_cpus, max_batch_size, batch_wait_ms, host, port, address,
          num_cpus, metrics_port, access_log, trusted_keys, max_body_mb):
    """Serve BUNDLE over HTTP on Ray Serve, batching concurrent requests into one model call.

    \b
    POST /v1/classify?top_k=K[&embedding=1]  (body: image bytes) -> {"labels", "scores"[, "embedding"]}
                                             422 {"error"} for an image that cannot be decoded or
                                             that the model gives NaN / inf scores for
    GET  /v1/health                          200 once the bundle is loaded
    With --trusted-key each replica loads its own checked copy of the bundle the driver verified.
    Ctrl-C / SIGTERM stops it gracefully (exit 0): accepted requests are answered first.
    Try it: curl -X POST --data-binary @cat.jpg 'http://127.0.0.1:8000/v1/classify?top_k=3'

    \b
    Example:
      clap-edge serve bundle/ --replicas 2 --max-batch-size 32 --port 8000
    """
    from clap_edge.runtime.scale.serve import ServeConfig, serve as run

    config = ServeConfig(bundle=bundle, backend=backend, threads=threads, replicas=replicas,
                         replica_cpus=replica_cpus, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms,
                         host=host, port=port, address=address, num_cpus=num_cpus, metrics_port=metrics_port,
                         access_log=access_log, max_body_mb=max_body_mb, trusted_keys=tuple(trusted_keys))

    def ready(c) -> None:
        metrics = f", metrics on :{c.metrics_port}/metrics" if c.metrics_port else ""
        click.echo(f"serving {c.bundle} on http://{c.host}:{c.port}/v1/classify ({c.replicas} replica(s){metrics}); "
                   "Ctrl-C to stop", err=True)

    run(config, on_ready=ready)
    click.echo("stopped", err=True)


@click.command("export-triton")
@click.argument("bundle", type=click.Path(exists=True))
@click.argument("repo", type=click.Path())
@click.option("--backend", type=click.Choice(["onnxruntime", "openvino", "tensorrt"]), default="onnxruntime",
              show_default=True, help="Triton backend (tensorrt needs an engine in the bundle).")
@click.option("--precision", default="fp32", show_default=True,
              help="bundle variant for onnxruntime / openvino: fp32, int8, qdq, fp16.")
@click.option("--engine", default=None, help="tensorrt: the bundle's engine file when it has several.")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
              help="model instances (instance_group count).")
@click.option("--queue-delay-us", type=click.IntRange(min=0), default=1000, show_default=True,
              help="dynamic batching: max_queue_delay_microseconds.")
@click.option("--model-name", default="clap_edge", show_default=True, help="the model's name in the repository.")
@click.option("--force", is_flag=True, help="replace REPO/<model-name> if it exists.")
@click.option("--json", "as_json", is_flag=True, help="print what was written as JSON.")
@click.option("--trusted-key", "trusted_keys", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="public key PEM; the bundle must be signed by one of these (repeatable). It is checked on a "
                   "private copy that the repository is written from.")
def export_triton(bundle, repo, backend, precision, engine, max_batch_size, instances, queue_delay_us, model_name,
                  force, as_json, trusted_keys):
    """Write a Triton Inference Server model repository for BUNDLE into REPO.

    REPO/<model-name>/ gets config.pbtxt (from the manifest), labels.txt (class names, so Triton's
    classification extension answers labels), preprocess.json and 1/model.onnx (or model.plan).
    Clients send the preprocessed float32 tensor [N, 3, H, W] (see preprocess.json).
    Then: tritonserver --model-repository=REPO

    \b
    Example:
      clap-edge export-triton bundle/ model_repository --instances 2 --max-batch-size 64
      clap-edge export-triton bundle.tar model_repository --trusted-key signer.pub
    """
    from clap_edge.export.builders.triton import TritonConfig, export_triton as run

    config = TritonConfig(backend=backend, precision=precision, engine=engine, max_batch_size=max_batch_size,
                          instances=instances, max_queue_delay_us=queue_delay_us, model_name=model_name,
                          overwrite=force)
    dest = run(bundle, repo, config, trusted_keys=list(trusted_keys) or None)
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    if as_json:
        click.echo(json.dumps({"model_dir": str(dest), "files": files}))
    else:
        click.echo(f"wrote {dest}: {', '.join(files)}")


COMMANDS = [serve, export_triton]
