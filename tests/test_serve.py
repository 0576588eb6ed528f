"""clap-edge serve: the HTTP contract on Ray Serve, under load, and a graceful stop with requests in flight."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clap_edge.core.errors import ImageError
from clap_edge.runtime.scale.client import Client, ServeError
from clap_edge.runtime.scale.decode import decode_bytes, error_message
from clap_edge.runtime.scale.serve import ReplicaCore, _parse_query, prediction_record
from serving_stubs import nan_for_white, white_png

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clf(runtime_bundle):
    from clap_edge.runtime import Classifier

    with Classifier.open(runtime_bundle, backend="onnxruntime", threads=1) as c:
        yield c


def _image_bytes(rng, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    h, w = int(rng.integers(30, 120)), int(rng.integers(30, 120))
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


# ---- fast: decoding and records, no Ray ------------------------------------------------------


def test_decode_bytes_equals_file_decoding(clf, tmp_path):
    rng = np.random.default_rng(0)
    for fmt, mode in (("JPEG", "RGB"), ("PNG", "RGBA"), ("PNG", "L"), ("JPEG", "CMYK"), ("TIFF", "I;16")):
        data = _image_bytes(rng, fmt, mode if mode != "I;16" else "L")
        if mode == "I;16":  # a 16-bit grayscale file: scaled, not clipped, by the shared decoder
            buf = io.BytesIO()
            Image.fromarray((rng.integers(0, 65535, (40, 50))).astype(np.uint16)).save(buf, format="TIFF")
            data = buf.getvalue()
        path = tmp_path / f"img.{fmt.lower()}"
        path.write_bytes(data)
        np.testing.assert_array_equal(decode_bytes(clf, data), clf.preprocess(path))
        np.testing.assert_array_equal(clf.preprocess(io.BytesIO(data)), clf.preprocess(path))  # a file object


def test_decode_bytes_writes_no_temporary_file(clf, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise AssertionError("decode_bytes made a temporary file")

    for name in ("mkstemp", "NamedTemporaryFile", "TemporaryFile", "SpooledTemporaryFile"):
        monkeypatch.setattr(tempfile, name, refuse)
    data = _image_bytes(np.random.default_rng(3))
    assert decode_bytes(clf, data).shape == clf.input_shape
    with pytest.raises(ImageError, match="^request body: cannot decode image"):
        decode_bytes(clf, b"GIF89a not really")


def test_decode_bytes_errors_name_the_request_not_a_temp_file(clf, tmp_path):
    good = _image_bytes(np.random.default_rng(1))
    for data, fragment in ((b"", "empty"), (b"not an image", "not an image file"), (good[: len(good) // 3], "")):
        with pytest.raises(ImageError) as info:
            decode_bytes(clf, data, "request body")
        message = str(info.value)
        assert message.startswith("request body: ") and fragment in message
        assert "clap-edge-img-" not in message
        # the same file through `classify`'s path gives the same problem
        path = tmp_path / "x.jpg"
        path.write_bytes(data)
        if data:
            with pytest.raises(ImageError) as file_info:
                clf.preprocess(path)
            assert error_message(file_info.value, str(path)) == error_message(info.value, "request body")


def test_record_is_a_top_k_prefix_of_predict(clf):
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for _ in range(4)]
    full = clf.predict_batch(np.stack([clf.preprocess(im) for im in images]), top_k=len(clf.class_names))
    for k in (1, 3, 99):
        reference = clf.predict(images, top_k=k)
        for pred, ref in zip(full, reference):
            record = prediction_record(pred, k, with_embedding=True)
            assert record["labels"] == ref.labels and record["scores"] == pytest.approx(ref.scores, abs=1e-7)
            assert np.allclose(record["embedding"], ref.embedding, atol=1e-6)
    assert "embedding" not in prediction_record(full[0], 2, with_embedding=False)


def test_query_parsing():
    assert _parse_query({}) == (5, False)
    assert _parse_query({"top_k": "2", "embedding": "1"}) == (2, True)
    for bad in ("0", "x", "-3"):
        with pytest.raises(ValueError, match="top_k"):
            _parse_query({"top_k": bad})


def _png_bytes(path) -> bytes:
    return Path(path).read_bytes()


def _respond(core, body: bytes, query=None, method="POST", path="/v1/classify"):
    async def read_body(limit):
        return None if len(body) > limit else body

    return core.respond(method, path, query or {}, read_body)


def test_replica_core_gives_each_image_its_own_answer_in_a_shared_model_call(clf, tmp_path):
    """The replica's serving core (what the Serve deployment runs): the model gives NaN for the white image
    only; in one model call with two neighbours, the white one answers 422 with the shared non-finite error,
    the neighbours answer 200 with their real scores. Bad bodies and queries are 4xx JSON, never a 500."""
    import asyncio

    from clap_edge.runtime.batching import NON_FINITE

    nan_clf = nan_for_white(clf)
    core = ReplicaCore(nan_clf, max_batch_size=8, max_body_bytes=1 << 20, info={"classes": 5})
    rng = np.random.default_rng(4)
    good = [_image_bytes(rng) for _ in range(2)]
    white = _png_bytes(white_png(tmp_path / "white.png"))
    reference = clf.predict([Image.open(io.BytesIO(b)) for b in good], top_k=3)

    async def scenario():
        arrays = [decode_bytes(clf, b) for b in (good[0], white, good[1])]
        outcomes = await core.predict_many(arrays)
        answers = await asyncio.gather(*[_respond(core, b, {"top_k": "3"}) for b in (good[0], white, good[1])])
        return outcomes, answers

    outcomes, answers = asyncio.run(scenario())
    assert nan_clf.runner.batch_sizes[0] == 3  # the three shared one model call
    assert isinstance(outcomes[1], ImageError) and str(outcomes[1]) == f"request body: {NON_FINITE}"
    assert answers[1] == (422, {"error": NON_FINITE})
    for (status, body), ref in zip((answers[0], answers[2]), reference):
        assert status == 200 and body["labels"] == ref.labels
        np.testing.assert_allclose(body["scores"], ref.scores, rtol=1e-5, atol=1e-6)

    status, body = asyncio.run(_respond(core, b"not an image"))
    assert status == 422 and body["error"].startswith("cannot decode image")
    assert asyncio.run(_respond(core, good[0], {"top_k": "0"}))[0] == 400
    assert asyncio.run(_respond(core, bytes(2 << 20)))[0] == 413
    assert asyncio.run(_respond(core, good[0], method="GET"))[0] == 405
    assert asyncio.run(_respond(core, good[0], path="/nope"))[0] == 404
    assert asyncio.run(_respond(core, b"", method="GET", path="/v1/health")) == (200, {"status": "ok", "classes": 5})


def test_replica_core_answers_500_json_when_the_model_fails_on_every_image(clf):
    import asyncio

    class Broken:
        class_names = clf.class_names

        def preprocess(self, image, label=None):
            return clf.preprocess(image, label)

        def predict_batch(self, batch, top_k=5):
            raise RuntimeError("backend exploded")

    core = ReplicaCore(Broken(), max_batch_size=8, max_body_bytes=1 << 20)
    status, body = asyncio.run(_respond(core, _image_bytes(np.random.default_rng(5))))
    assert status == 500 and body == {"error": "the model failed: RuntimeError: backend exploded"}


def test_client_reports_an_unreachable_server():
    port = _free_port()
    with pytest.raises(ServeError, match="cannot reach"):
        Client(f"http://127.0.0.1:{port}", timeout=2).health()
    with pytest.raises(ImageError, match="cannot read"):
        Client(f"http://127.0.0.1:{port}").classify("/nonexistent/cat.jpg")


# ---- slow: the real server ---------------------------------------------------------------------


def _free_port(n: int = 1):
    """n distinct free ports (held open together, so two calls cannot hand out the same one)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        ports = [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
    return ports[0] if n == 1 else ports


class _Server:
    """`clap-edge serve` in a subprocess on 127.0.0.1 (a local 2-CPU Ray cluster)."""

    def __init__(self, bundle: Path, port: int, metrics_port: int, tmp: Path, extra: tuple[str, ...] = (),
                 script: tuple[str, ...] = ("from clap_edge.apps.cli import main; main()",)):
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.log = open(tmp / "serve.log", "wb")
        cmd = [sys.executable, "-c", *script, "serve", str(bundle),
               "--backend", "onnxruntime", "--threads", "1", "--port", str(port), "--num-cpus", "2",
               "--max-batch-size", "16", "--batch-wait-ms", "2", "--metrics-port", str(metrics_port),
               "--max-body-mb", "1", *extra]
        pythonpath = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
        env = {**os.environ, "PYTHONPATH": pythonpath, "RAY_USAGE_STATS_ENABLED": "0"}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.log_path = tmp / "serve.log"

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        client = Client(self.url, timeout=2)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"serve exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                client.health()
                return
            except ServeError:
                time.sleep(0.5)
        pytest.fail(f"serve not ready after {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def _check_metrics(url: str, timeout: float = 30) -> None:
    """Ray Serve's Prometheus metrics are exposed, with the size of every model call (clap_edge_model_batch_size):
    its mean is > 1, so requests were batched."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
        except OSError:
            text = ""
        lines = text.splitlines()
        sums = [float(line.rsplit(" ", 1)[1]) for line in lines if "clap_edge_model_batch_size_sum" in line]
        counts = [float(line.rsplit(" ", 1)[1]) for line in lines if "clap_edge_model_batch_size_count" in line]
        serve_own = any(line.startswith("ray_serve_deployment_processing_latency_ms") for line in lines)
        if serve_own and sums and counts and sum(counts) > 0 and sum(sums) / sum(counts) > 1:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"no batch-size metrics from Ray Serve at {url} (got {len(text)} bytes)")
        time.sleep(2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """40 valid images (JPEG / PNG, odd modes) and 3 broken bodies."""
    rng = np.random.default_rng(7)
    good = [_image_bytes(rng, "JPEG" if i % 2 else "PNG", ("RGB", "L", "RGBA", "RGB")[i % 4] if i % 2 == 0
                         else "RGB") for i in range(40)]
    broken = [b"", b"GIF89a not really", good[1][:200]]
    return good, broken


@pytest.mark.slow
def test_serve_load_2000_requests_then_graceful_sigint(runtime_bundle, clf, corpus, tmp_path):
    good, broken = corpus
    reference = clf.predict([Image.open(io.BytesIO(b)) for b in good], top_k=3)
    pytest.importorskip("ray.serve", reason="Ray Serve not installed (pip install 'clap-edge[serve]')")
    server = _Server(runtime_bundle, *_free_port(2), tmp_path)
    try:
        server.wait_ready()
        client = Client(server.url)
        health = client.health()
        assert health["status"] == "ok" and health["classes"] == len(clf.class_names)
        with pytest.raises(ServeError, match="HTTP 413"):
            client.classify(b"\xff\xd8" + bytes(3 << 19))  # 1.5 MB over the 1 MB limit
        with pytest.raises(ServeError, match="HTTP 400.*top_k"):
            client.classify(good[0], top_k=0)

        # 8 concurrent clients, 2,000 requests, every 25th one broken
        n_clients, per_client = 8, 250
        answers: list[list] = [[] for _ in range(n_clients)]

        def run(c: int) -> None:
            for i in range(per_client):
                n = c * per_client + i
                if n % 25 == 0:
                    kind, body = "broken", broken[n % len(broken)]
                else:
                    kind, body = n % len(good), good[n % len(good)]
                try:
                    answers[c].append((kind, client.classify(body, top_k=3, embedding=(n % 10 == 1))))
                except Exception as e:  # kept, asserted below: none may be lost
                    answers[c].append((kind, e))

        threads = [threading.Thread(target=run, args=(c,)) for c in range(n_clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        flat = [a for per in answers for a in per]
        assert len(flat) == 2000
        n_broken = 0
        for kind, answer in flat:
            if kind == "broken":
                n_broken += 1
                assert isinstance(answer, ImageError), answer  # HTTP 422 with {"error": ...}
                assert "cannot decode image" in str(answer)
                continue
            assert isinstance(answer, dict), answer
            ref = reference[kind]
            assert answer["labels"] == ref.labels
            np.testing.assert_allclose(answer["scores"], ref.scores, rtol=1e-5, atol=1e-6)
            if "embedding" in answer:
                np.testing.assert_allclose(answer["embedding"], ref.embedding, rtol=1e-4, atol=1e-5)
        assert n_broken == 80
        print(f"2000 requests in {elapsed:.1f}s ({2000 / elapsed:.0f} req/s)")
        _check_metrics(server.metrics_url)

        # SIGINT while 8 clients are sending: every request sent before the signal is answered
        stop, sent_before, results = threading.Event(), [], []
        lock = threading.Lock()
        signalled_at: list[float] = []

        def flood(c: int) -> None:
            i = 0
            while not stop.is_set():
                started = time.monotonic()
                body = good[(c + i) % len(good)]
                try:
                    out = client.classify(body, top_k=3)
                except Exception as e:
                    out = e
                with lock:
                    results.append((started, (c + i) % len(good), out))
                i += 1

        flooders = [threading.Thread(target=flood, args=(c,)) for c in range(8)]
        for t in flooders:
            t.start()
        time.sleep(1.0)
        signalled_at.append(time.monotonic())
        server.proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        stop.set()
        for t in flooders:
            t.join(60)
        assert server.proc.wait(90) == 0, server.log_path.read_text()[-3000:]
        sent_before = [(k, out) for started, k, out in results if started < signalled_at[0]]
        assert len(sent_before) >= 8
        failed = [(k, out) for k, out in sent_before if not isinstance(out, dict)]
        assert not failed, f"{len(failed)} requests sent before SIGINT were not answered: {failed[:3]}"
        for k, out in sent_before:
            assert out["labels"] == reference[k].labels
        after = [str(out).split(": ", 1)[-1][:40] if not isinstance(out, dict) else "200"
                 for started, _, out in results if started >= signalled_at[0]]
        print(f"SIGINT: {len(sent_before)} requests in flight or before it all answered; after it: "
              f"{ {k: after.count(k) for k in set(after)} }")
    finally:
        server.close()


# `clap-edge serve` with a bundle swapped for a forged one right after the driver's check, before any
# replica exists: argv[1] is the forged bundle's folder, argv[2] what is swapped ("bundle": the user's
# folder; "snapshot": the driver's pinned private copy itself, which replicas then refuse).
SWAP_AFTER_THE_CHECK = """
import contextlib, shutil, sys
import clap_edge.runtime.scale.serve as serve_module
forged, target, checked = sys.argv.pop(1), sys.argv.pop(1), serve_module.pin_bundle

@contextlib.contextmanager
def swapping(bundle, *args, **kwargs):
    with checked(bundle, *args, **kwargs) as pin:
        where = bundle if target == "bundle" else pin.source
        for name in ("manifest.json", "manifest.sha256"):
            shutil.copy(f"{forged}/{name}", f"{where}/{name}")
        print("swapped", where, flush=True)
        yield pin

serve_module.pin_bundle = swapping
from clap_edge.apps.cli import main
main()
"""


@pytest.mark.slow
def test_serve_replicas_load_the_checked_bytes_and_sigterm_exits_0(runtime_bundle, clf, tmp_path):
    """--trusted-key: the bundle is swapped for a forged one (two class names exchanged, manifest digest
    recomputed, so only the signature tells) after the driver's check, before the replicas load: they serve
    the checked bundle's labels, never the forged ones. A bad body is a 422 JSON error. SIGTERM stops it as
    cleanly as SIGINT: exit 0 (Ray's own SIGTERM handler made it exit -6 before)."""
    import json
    import shutil

    pytest.importorskip("ray.serve", reason="Ray Serve not installed (pip install 'clap-edge[serve]')")
    pytest.importorskip("model_signing", reason="signing needs the [sign] extra")
    from click.testing import CliRunner

    from clap_edge.apps.cli import main
    from clap_edge.export.bundle.writer import write_manifest

    assert CliRunner().invoke(main, ["keygen", str(tmp_path / "alice")]).exit_code == 0
    bundle = shutil.copytree(runtime_bundle, tmp_path / "bundle")
    assert CliRunner().invoke(main, ["sign", str(bundle), "--key", str(tmp_path / "alice.pem")]).exit_code == 0
    forged = shutil.copytree(bundle, tmp_path / "forged")
    manifest = json.loads((forged / "manifest.json").read_text())
    manifest["class_names"][0], manifest["class_names"][1] = manifest["class_names"][1], manifest["class_names"][0]
    write_manifest(forged, manifest)

    data = [_image_bytes(np.random.default_rng(seed)) for seed in range(4)]
    reference = clf.predict([Image.open(io.BytesIO(b)) for b in data], top_k=5)
    server = _Server(bundle, *_free_port(2), tmp_path, extra=("--trusted-key", str(tmp_path / "alice.pub")),
                     script=(SWAP_AFTER_THE_CHECK, str(forged), "bundle"))
    try:
        server.wait_ready()
        assert "swapped" in server.log_path.read_text()
        assert json.loads((bundle / "manifest.json").read_text())["class_names"] == manifest["class_names"]
        client = Client(server.url)
        assert client.health()["signed"] is True
        for i, (body, ref) in enumerate(zip(data, reference)):  # all five labels: the forged order differs
            sent = io.BytesIO(body) if i % 2 else body  # the client takes bytes or a file object
            assert client.classify(sent, top_k=5)["labels"] == ref.labels
        with pytest.raises(ImageError, match="cannot decode image"):  # HTTP 422 {"error": ...}
            client.classify(b"GIF89a not really")
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(90) == 0, server.log_path.read_text()[-3000:]
        assert server.log_path.read_text().rstrip().endswith("stopped")
    finally:
        server.close()


@pytest.mark.slow
def test_serve_replicas_that_refuse_their_copy_end_in_one_line(runtime_bundle, tmp_path):
    """The pinned snapshot itself is changed after the driver's check: every replica refuses its copy
    (manifest sha256 not the checked one); Serve gives up and serve exits 2 with one line, no traceback."""
    import json
    import shutil

    pytest.importorskip("ray.serve", reason="Ray Serve not installed (pip install 'clap-edge[serve]')")
    from clap_edge.export.bundle.writer import write_manifest

    forged = shutil.copytree(runtime_bundle, tmp_path / "forged")
    manifest = json.loads((forged / "manifest.json").read_text())
    manifest["class_names"][0], manifest["class_names"][1] = manifest["class_names"][1], manifest["class_names"][0]
    write_manifest(forged, manifest)
    port, metrics_port = _free_port(2)
    server = _Server(runtime_bundle, port, metrics_port, tmp_path, script=(SWAP_AFTER_THE_CHECK, str(forged),
                                                                         "snapshot"))
    try:
        assert server.proc.wait(240) == 2, server.log_path.read_text()[-3000:]
    finally:
        server.close()
    log = server.log_path.read_text()
    last = log.strip().splitlines()[-1]  # (Ray forwards the replicas' own logs above it)
    assert "swapped" in log
    assert f"{runtime_bundle}: the replicas could not load the bundle: " in last, log[-3000:]
    assert "changed since it was checked" in last, log[-3000:]


def test_serve_refuses_a_bad_bundle_in_one_line_before_starting_ray(runtime_bundle, tmp_path):
    import shutil

    from click.testing import CliRunner

    from clap_edge.apps.cli import main

    bad = shutil.copytree(runtime_bundle, tmp_path / "bad")
    with open(bad / "model.onnx", "r+b") as f:  # same size: the sha256 check is what refuses it
        f.seek(-8, 2)
        f.write(b"tampered")
    result = CliRunner().invoke(main, ["serve", str(bad), "--backend", "onnxruntime", "--port", str(_free_port())])
    assert result.exit_code == 2
    assert "model.onnx" in result.stderr and "sha256" in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_sigint_and_sigterm_both_lead_to_the_graceful_stop(monkeypatch):
    """serve() turns either signal into one orderly stop() and gives the previous handlers back."""
    import clap_edge.runtime.scale.serve as serve_module
    from clap_edge.runtime.scale.serve import ServeConfig

    for sig in (signal.SIGTERM, signal.SIGINT):
        calls: list[str] = []
        before = signal.getsignal(sig)
        monkeypatch.setattr(serve_module, "pin_bundle", lambda *a, **k: contextlib.nullcontext("pin"))
        monkeypatch.setattr(serve_module, "start", lambda config, pin, on_connect: calls.append("start"))
        monkeypatch.setattr(serve_module, "stop", lambda: calls.append("stop"))
        threading.Timer(0.3, os.kill, (os.getpid(), sig)).start()
        serve_module.serve(ServeConfig(bundle="unused"), on_ready=lambda config: calls.append("ready"))
        assert calls == ["start", "ready", "stop"]
        assert signal.getsignal(sig) is before


def test_serve_refuses_an_unsigned_bundle_when_keys_are_trusted(runtime_bundle, tmp_path):
    """--trusted-key: the bundle is verified in the driver, before any Ray process starts."""
    pytest.importorskip("model_signing", reason="signing needs the [sign] extra")
    from click.testing import CliRunner

    from clap_edge.apps.cli import main

    assert CliRunner().invoke(main, ["keygen", str(tmp_path / "alice")]).exit_code == 0
    result = CliRunner().invoke(main, ["serve", str(runtime_bundle), "--backend", "onnxruntime",
                                       "--trusted-key", str(tmp_path / "alice.pub"), "--port", str(_free_port())])
    assert result.exit_code == 2, result.output
    assert "sign" in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
