"""Trust nothing that comes in (issue 9): signed bundles, the manifest digest, bounded tars, claimed
export targets and cleanable staging debris, folder walks that account for every entry, special
files never opened, bounded image decoding, no NaN in output, class-name and head-metadata checks."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import stat
import tarfile
import threading
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clap_edge.apps.cli import main
from clap_edge.core.errors import BundleError, ImageError, OutputError, PromptError
from clap_edge.core.images import load_image, scan_images, to_rgb
from clap_edge.core.io import atomic_directory, clean_stale, staging_prefix
from clap_edge.export.bundle import MANIFEST, MANIFEST_DIGEST, SIGNATURE_FILE, Bundle, TarLimits, pack_tar
from clap_edge.export.bundle.writer import write_manifest


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _copy(src, tmp_path, name="bundle"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _photo(path, seed=0, size=(60, 40)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def signed(runtime_bundle, keys, tmp_path_factory):
    b = _copy(runtime_bundle, tmp_path_factory.mktemp("signed"))
    result = _cli("sign", b, "--key", keys / "alice.pem")
    assert result.exit_code == 0, result.output
    return b


# ---- signed bundles ------------------------------------------------------------------------


def test_signed_bundle_verifies_and_names_the_key(signed, keys):
    from cryptography.hazmat.primitives import serialization
    import hashlib

    result = _cli("verify", signed, "--trusted-key", keys / "alice.pub", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    pem = serialization.load_pem_public_key((keys / "alice.pub").read_bytes()).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert out["key_fingerprint"] == hashlib.sha256(pem).hexdigest()
    # every file of the folder is covered, the manifest and its digest included
    assert out["files"] == len([p for p in signed.rglob("*") if p.is_file()]) - 1
    inspect = _cli("inspect", signed, "--json")
    assert json.loads(inspect.stdout)["signature"] == {"signed": True, "key_fingerprint": out["key_fingerprint"],
                                                       "verified": False}


def test_wrong_key_and_unsigned_are_refused(signed, keys, runtime_bundle):
    result = _cli("verify", signed, "--trusted-key", keys / "mallory.pub")
    assert result.exit_code == 2 and "was not made by this trusted key" in result.stderr
    result = _cli("verify", runtime_bundle, "--trusted-key", keys / "alice.pub")
    assert result.exit_code == 2 and "unsigned bundle refused" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    # either of two keys may sign
    assert _cli("verify", signed, "--trusted-key", keys / "mallory.pub", "--trusted-key", keys / "alice.pub"
                ).exit_code == 0


@pytest.mark.parametrize("change", ["manifest", "digest-and-manifest", "model", "added", "removed"])
def test_any_change_after_signing_is_refused(signed, keys, tmp_path, change):
    b = _copy(signed, tmp_path)
    if change == "manifest":  # swap two class names; write_manifest keeps manifest.sha256 consistent
        m = json.loads((b / MANIFEST).read_text())
        m["class_names"][0], m["class_names"][1] = m["class_names"][1], m["class_names"][0]
        write_manifest(b, m)
    elif change == "digest-and-manifest":
        (b / MANIFEST_DIGEST).write_text("0" * 64 + "  manifest.json\n")
    elif change == "model":
        data = bytearray((b / "model.onnx").read_bytes())
        data[-10] ^= 1
        (b / "model.onnx").write_bytes(bytes(data))
    elif change == "added":
        (b / "notes.txt").write_text("x")
    else:
        (b / "calibration.npy").unlink()
    with pytest.raises(BundleError, match="signature check failed: the bundle's files differ from what was signed"):
        Bundle.open(b, trusted_keys=[keys / "alice.pub"])


def test_classifier_and_classify_take_trusted_keys(signed, keys, runtime_bundle, tmp_path):
    from clap_edge.runtime.classifier import Classifier

    with Classifier.open(signed, backend="onnxruntime", trusted_keys=[keys / "alice.pub"]) as clf:
        assert clf.bundle.signature.key_path.endswith("alice.pub")
        # the signature verified every file: the backend did not hash model.onnx again
        assert "model.onnx" in clf.bundle._verified
    with pytest.raises(BundleError, match="unsigned bundle refused"):
        Classifier.open(runtime_bundle, trusted_keys=[keys / "alice.pub"])
    img = _photo(tmp_path / "a.png")
    assert _cli("classify", signed, img, "--trusted-key", keys / "alice.pub", "--backend", "onnxruntime"
                ).exit_code == 0
    bad = _cli("classify", signed, img, "--trusted-key", keys / "mallory.pub")
    assert bad.exit_code == 2 and bad.stderr.startswith("error: ") and bad.stdout == ""


def test_signed_tar_verifies_and_errors_name_the_tar(signed, keys, tmp_path):
    tar = pack_tar(signed, tmp_path / "b.tar")
    assert _cli("verify", tar, "--trusted-key", keys / "alice.pub").exit_code == 0
    result = _cli("verify", tar, "--trusted-key", keys / "mallory.pub")
    assert result.exit_code == 2 and f"error: {tar}: signature check failed" in result.stderr
    assert "clap-edge-staging" not in result.stderr


def test_missing_signing_library_is_one_line_naming_the_extra(signed, keys, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_model_signing(name, *a, **k):
        if name.startswith("model_signing"):
            raise ImportError("No module named 'model_signing'", name="model_signing")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_model_signing)
    result = _cli("verify", signed, "--trusted-key", keys / "alice.pub")
    assert result.exit_code == 2 and "pip install 'clap-edge[sign]'" in result.stderr
    result = _cli("sign", signed, "--key", keys / "alice.pem")
    assert result.exit_code == 2 and "pip install 'clap-edge[sign]'" in result.stderr


def test_add_to_bundle_drops_a_stale_signature(signed, tmp_path, caplog):
    from clap_edge.export.bundle import add_to_bundle

    b = _copy(signed, tmp_path)
    add_to_bundle(b, {"engines/x.plan": b"plan"}, engines=[{"file": "engines/x.plan", "engine": "tensorrt",
                                                           "precision": "fp16"}])
    assert not (b / SIGNATURE_FILE).exists() and "sign it again" in caplog.text
    assert Bundle.open(b).manifest.engines[0].file == "engines/x.plan"


# ---- the manifest digest (no keys) ------------------------------------------------------------


def test_manifest_edit_without_its_digest_is_refused(runtime_bundle, tmp_path):
    b = _copy(runtime_bundle, tmp_path)
    text = (b / MANIFEST).read_text().replace('"cat"', '"cow"')
    (b / MANIFEST).write_text(text)
    with pytest.raises(BundleError, match="manifest.json was modified after export"):
        Bundle.open(b)
    (b / MANIFEST_DIGEST).unlink()
    with pytest.raises(BundleError, match="missing file 'manifest.sha256'"):
        Bundle.open(b)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_old_schema_is_one_line_saying_re_export(runtime_bundle, tmp_path, version):
    from clap_edge.export.bundle.writer import write_manifest

    b = _copy(runtime_bundle, tmp_path)
    m = json.loads((b / MANIFEST).read_text())
    m["schema_version"] = version
    if version == 1:
        (b / MANIFEST).write_text(json.dumps(m))  # a version-1 bundle had no manifest.sha256
        (b / MANIFEST_DIGEST).unlink()
    else:
        write_manifest(b, m, validate=False)  # a version-2 bundle: digest in step, everything else valid
    result = _cli("inspect", b)
    assert result.exit_code == 2
    assert result.stderr.strip().endswith(f"manifest.json: manifest field schema_version: {version} is older than "
                                          "this clap-edge reads (>= 4); re-export the bundle with clap-edge >= 0.2 "
                                          "(`clap-edge export`)")
    assert len(result.stderr.strip().splitlines()) == 1


# ---- tar bounds -----------------------------------------------------------------------------


def _tar(path, members, mode="w"):
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_gzip_bomb_tar_is_refused_before_unpacking(tmp_path):
    bomb = _tar(tmp_path / "bomb.tar.gz", [("manifest.json", b"{}"), ("zeros.bin", bytes(80 << 20))], "w:gz")
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(BundleError, match=r"bomb\.tar\.gz: bundle tar unpacks to over 50x its size"):
        Bundle.open(bomb)
    with pytest.raises(BundleError, match="more than 1,000 bytes"):
        Bundle.open(_tar(tmp_path / "big.tar", [("a", bytes(2000))]), tar_limits=TarLimits(max_bytes=1000))
    many = _tar(tmp_path / "many.tar", [(f"f{i}", b"") for i in range(30)])
    with pytest.raises(BundleError, match="more than 20 members"):
        Bundle.open(many, tar_limits=TarLimits(max_members=20))


def test_tar_errors_name_the_tar_not_the_temp_folder(runtime_bundle, tmp_path):
    b = _copy(runtime_bundle, tmp_path)
    (b / "model.onnx").write_bytes(b"tampered")
    tar = pack_tar(b, tmp_path / "x.tar")
    with Bundle.open(tar) as opened:
        report = opened.verify_all()
    assert "corrupt or was modified" in report["model.onnx"] or "bytes but the manifest lists" in report["model.onnx"]
    from clap_edge.runtime.classifier import Classifier

    with pytest.raises(BundleError) as e:
        Classifier.open(tar, backend="onnxruntime")
    assert str(e.value).startswith(f"{tar}: ") and "staging" not in str(e.value)


# ---- claims and staging debris -------------------------------------------------------------


def test_second_writer_of_the_same_target_gets_one_line(tmp_path):
    target = tmp_path / "bundle"
    inside, release = threading.Event(), threading.Event()
    errors = []

    def first():
        with atomic_directory(target) as d:
            (d / "f").write_text("1")
            inside.set()
            release.wait(10)

    t = threading.Thread(target=first)
    t.start()
    inside.wait(10)
    try:
        with atomic_directory(target):
            pass
    except OutputError as e:
        errors.append(str(e))
    release.set()
    t.join()
    assert errors and "another clap-edge process" in errors[0] and "is writing it" in errors[0]
    assert (target / "f").read_text() == "1"
    with pytest.raises(OutputError, match="already exists"):  # after the first finished: exists, one line
        with atomic_directory(target):
            pass


def test_two_processes_exporting_to_one_path_loser_gets_one_line(tmp_path):
    """Two real processes: exactly one bundle appears; the other exits 2 with one line."""
    import subprocess
    import sys

    code = ("import sys, time; from clap_edge.core.io import atomic_directory\n"
            "from clap_edge.core.errors import ClapEdgeError\n"
            "try:\n"
            "    with atomic_directory(sys.argv[1]) as d:\n"
            "        (d / 'who').write_text(sys.argv[2]); time.sleep(1.0)\n"
            "except ClapEdgeError as e:\n"
            "    print(e, file=sys.stderr); sys.exit(2)\n")
    target = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(target), str(i)], stderr=subprocess.PIPE, text=True,
                              env=env) for i in range(2)]
    results = [(p.wait(60), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    assert len(loser.strip().splitlines()) == 1 and ("is writing it" in loser or "already exists" in loser)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_stale_staging_from_a_killed_run_is_cleaned(tmp_path):
    import subprocess
    import sys

    # a process that made staging debris and was killed (its pid is gone)
    proc = subprocess.Popen([sys.executable, "-c", "import os; print(os.getpid())"], stdout=subprocess.PIPE, text=True)
    dead = int(proc.communicate()[0])
    mine = staging_prefix("bundle")
    stale_dir = tmp_path / mine.replace(f"-{os.getpid()}@", f"-{dead}@").rstrip(".")
    stale_dir.mkdir()
    (stale_dir / "model.onnx").write_bytes(b"half")
    stale_file = tmp_path / (mine.replace(f"-{os.getpid()}@", f"-{dead}@") + "x.tmp")
    stale_file.write_bytes(b"")
    live = tmp_path / (mine + "live.tmp")  # ours: still running
    live.mkdir()
    other = tmp_path / "keep-me"
    other.mkdir()
    result = _cli("clean", tmp_path, "--dry-run")
    assert result.exit_code == 0 and stale_dir.exists() and f"would remove {stale_dir}" in result.stdout
    # a later export to the same folder removes the debris too
    with atomic_directory(tmp_path / "bundle") as d:
        (d / "f").write_text("1")
    assert not stale_dir.exists() and not stale_file.exists() and live.exists() and other.exists()
    assert clean_stale(tmp_path) == []


def test_bundle_files_get_normal_modes_classes_safetensors_included(runtime_bundle):
    # a service running as another user must be able to read every file (classes.safetensors was 0600)
    umask = os.umask(0)
    os.umask(umask)
    for p in runtime_bundle.rglob("*"):
        if p.is_file():
            assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, p.name


# ---- folders and special files ---------------------------------------------------------------


@pytest.fixture
def odd_tree(tmp_path):
    root = tmp_path / "photos"
    (root / "real").mkdir(parents=True)
    _photo(root / "real" / "a.jpg")
    _photo(root / "b.png", 1)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    _photo(outside / "c.jpg", 2)
    (root / "linked").symlink_to(outside, target_is_directory=True)  # followed
    (root / "real" / "loop").symlink_to(root, target_is_directory=True)  # back to an ancestor
    (root / "again").symlink_to(root / "real", target_is_directory=True)  # same folder twice
    (root / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    os.mkfifo(root / "pipe.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock.png"))
    (root / "readme.txt").write_text("notes")
    yield root
    sock.close()


def test_scan_follows_linked_folders_and_accounts_for_every_entry(odd_tree):
    scan = scan_images([odd_tree])
    rel = sorted(p.relative_to(odd_tree).as_posix() for p in scan.files)
    assert rel == ["b.png", "linked/c.jpg", "real/a.jpg"]
    reasons = {p.path.relative_to(odd_tree).as_posix(): p.reason for p in scan.skipped}
    assert reasons["dangling.jpg"] == "broken symbolic link"
    assert reasons["pipe.jpg"] == "not a regular file (named pipe (FIFO))"
    assert reasons["sock.png"] == "not a regular file (socket)"
    assert reasons["real/loop"].startswith("symbolic link loop")
    assert reasons["again"].startswith("same folder as")
    assert [p.name for p in scan.other_files] == ["readme.txt"]


def test_classify_reports_every_skipped_entry_and_never_hangs_on_a_fifo(runtime_bundle, odd_tree, tmp_path):
    # named directly too: a FIFO (a plain open would block forever), a missing path, a dangling link
    result = _cli("classify", runtime_bundle, odd_tree, odd_tree / "pipe.jpg", tmp_path / "nope.jpg",
                  odd_tree / "dangling.jpg", "--json", "--backend", "onnxruntime")
    assert result.exit_code == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    ok = sorted(os.path.basename(r["path"]) for r in records if "labels" in r)
    errors = {r["path"]: r["error"] for r in records if "error" in r}
    assert ok == ["a.jpg", "b.png", "c.jpg"]
    assert errors[str(tmp_path / "nope.jpg")] == "no such file or directory"
    assert errors[str(odd_tree / "pipe.jpg")].startswith("not a regular file")
    # found in the walk: dangling, pipe, socket, loop, repeated folder; named: pipe, missing, dangling
    assert sum("error" in r for r in records) == 8 and len(errors) == 6
    assert "1 file(s) without an image extension were not read" in result.stderr


def test_load_image_never_opens_a_fifo(tmp_path):
    fifo = tmp_path / "p.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match=r"p\.jpg: not a regular file \(named pipe \(FIFO\)\); not opened"):
        load_image(fifo)


def test_unreadable_folder_is_reported(tmp_path, monkeypatch):
    (tmp_path / "locked").mkdir()
    _photo(tmp_path / "ok.png")
    real = os.scandir

    def scandir(path):  # as root, chmod 000 does not stop us: simulate what another user meets
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    scan = scan_images([tmp_path])
    assert [p.name for p in scan.files] == ["ok.png"]
    assert [(p.path.name, p.reason) for p in scan.skipped] == [("locked", "permission denied (cannot list the folder)")]


# ---- image decoding bounds ---------------------------------------------------------------------


def test_16bit_png_converts_in_stripes_with_little_extra_memory(tmp_path):
    import tracemalloc

    path = tmp_path / "deep.png"
    ramp = (np.arange(3000 * 2000, dtype=np.uint32) % 65536).reshape(2000, 3000).astype(np.uint16)
    Image.fromarray(ramp).save(path)
    img = Image.open(path)
    img.load()
    assert img.mode.startswith("I")
    from clap_edge.core.images import _high_depth_to_uint8

    tracemalloc.start()
    gray = _high_depth_to_uint8(img)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out = np.asarray(to_rgb(img))
    assert np.array_equal(out[..., 1], gray)
    # independent expectation: round(v * 255 / 65535) per sample
    want = np.round(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(out[..., 0], want) and np.array_equal(out[..., 2], want)
    # 6M pixels: a whole-image int64 copy alone is 48 MB; in stripes the peak is the 6 MB result + ~16 MB
    assert peak < 24 << 20, peak


def test_decode_memory_cap_refuses_with_a_message(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.zeros((2000, 2000), dtype=np.uint16)).save(path)
    with pytest.raises(ImageError, match=r"deep\.png: image would take about 23 MiB to decode .*limit 10 MiB"):
        load_image(path, max_bytes=10 << 20)
    assert load_image(path).size == (2000, 2000)


def test_decompression_bomb_warning_does_not_reach_stderr(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (300, 300)).save(path)
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 60_000  # 90,000 pixels: over PIL's warning limit, under its error limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # any warning would raise here
            warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # as images.py sets
            with pytest.raises(ImageError, match="too large to decode"):
                load_image(path, max_pixels=60_000)
    finally:
        Image.MAX_IMAGE_PIXELS = old


# ---- no NaN in output; batcher input -------------------------------------------------------


def test_non_finite_scores_are_an_error_for_that_image(runtime_bundle, tmp_path):
    from clap_edge.runtime.backends.base import RunnerOutput
    from clap_edge.runtime.classifier import Classifier

    paths = [_photo(tmp_path / f"{i}.png", i) for i in range(3)]
    with Classifier.open(runtime_bundle, backend="onnxruntime") as clf:
        infer = clf.runner.infer

        def poisoned(batch):
            out = infer(batch)
            logits = out.logits.copy()
            logits[1, 0] = np.nan
            return RunnerOutput(logits, out.embedding)

        clf.runner.infer = poisoned
        results = list(clf.predict_files(paths))
    kinds = [type(r).__name__ for _, r in results]
    assert kinds == ["Prediction", "ImageError", "Prediction"]
    assert "non-finite scores" in str(results[1][1])


def test_batcher_takes_preprocessed_arrays_and_refuses_empty_ones(runtime_bundle):
    from clap_edge.runtime.batching import BatchingClassifier
    from clap_edge.runtime.classifier import Classifier

    img = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    with Classifier.open(runtime_bundle, backend="onnxruntime") as clf, BatchingClassifier(clf) as bc:
        pre = clf.preprocess(img)
        assert pre.shape == (3, *clf.input_shape[1:])
        a, b = bc.submit(img).result(30), bc.submit(pre).result(30)
        assert a.labels == b.labels and np.allclose(a.scores, b.scores)
        with pytest.raises(ValueError, match=r"empty image array \(shape \[0\]\)"):
            bc.submit(np.zeros(0, dtype=np.float32))
        # a misshapen or non-finite array is that image's error (the one serving core's policy), not a crash
        with pytest.raises(ImageError, match="must be preprocessed, of shape"):
            bc.submit(np.zeros((3, 5, 5), dtype=np.float32)).result(30)
        bad = pre.copy()
        bad[0, 0, 0] = np.nan
        with pytest.raises(ImageError, match="NaN or infinite"):
            bc.submit(bad).result(30)


# ---- class names and head metadata -----------------------------------------------------------


@pytest.mark.parametrize("source", ["", "   ", ",", " , ,"])
def test_empty_class_lists_are_refused(source, tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()  # an empty string must not mean "the current folder's sub-folders"
    monkeypatch.chdir(tmp_path)
    from clap_edge.prompts import load_class_names

    with pytest.raises(PromptError):
        load_class_names(source)


def test_nfc_duplicates_are_dropped_naming_both_spellings():
    from clap_edge.prompts import check_unique_class_names, load_class_names

    with pytest.warns(UserWarning, match=r"duplicate class .* dropped \(.* appears as 'caf\\xe9' and 'cafe\\u0301', equal after Unicode NFC"):
        assert load_class_names("caf\u00e9,dog,cafe\u0301") == ["caf\u00e9", "dog"]
    with pytest.raises(PromptError, match=r"'caf\\xe9' and 'cafe\\u0301', equal after Unicode NFC"):
        check_unique_class_names(["caf\u00e9", "cafe\u0301"])


def test_train_classes_empty_is_exit_2_naming_the_problem(tmp_path):
    pytest.importorskip("torch")
    result = _cli("train", "--model", "clap-edge-tiny", "--classes", "", "--out", tmp_path / "h.safetensors")
    assert result.exit_code == 2 and "class list is empty" in result.stderr
    assert not (tmp_path / "h.safetensors").exists()


@pytest.mark.parametrize("change, message", [
    ({"in_dim": -64}, r"in_dim: must be an integer in \[1, 65536\], got -64"),
    ({"latent_dim": "32"}, "latent_dim: must be an integer"),
    ({"alpha": "high"}, "alpha: must be a finite number"),
    ({"class_names": "cat,dog"}, "class_names: must be a list of non-empty strings"),
    ({"class_names": ["caf\u00e9", "cafe\u0301"]}, r"class_names: .* appears as 'caf\\xe9' and 'cafe\\u0301', equal after Unicode NFC"),
    ({"activation": "tanh"}, "activation: must be one of"),
    ({"colour": "red"}, "colour: is not a head config field"),
    ({"training": [1]}, "training: must be an object"),
])
def test_head_metadata_fields_are_checked(tmp_path, change, message):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    from clap_edge.core.errors import CheckpointError
    from clap_edge.head import METADATA_KEY, CLAPHead, HeadConfig

    head = CLAPHead(HeadConfig(in_dim=8, latent_dim=4, class_names=["cat", "dog"]))
    meta = {"in_dim": 8, "latent_dim": 4, "out_dim": 8, "activation": "silu", "alpha": 1.0, "model_name": None,
            "pretrained": None, "class_names": ["cat", "dog"], "training": {}, **change}
    path = tmp_path / "h.safetensors"
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(path),
              metadata={METADATA_KEY: json.dumps(meta)})
    with pytest.raises(CheckpointError, match=rf"h\.safetensors: head metadata field {message}"):
        CLAPHead.load(path)
    del torch


def test_export_classes_empty_is_exit_2_not_the_heads_classes(tiny_head_path, tmp_path):
    result = _cli("export", "--head", tiny_head_path, "--classes", "", "--out", tmp_path / "b")
    assert result.exit_code == 2 and "class list is empty" in result.stderr
    assert not (tmp_path / "b").exists()


def test_a_stale_lock_is_taken_over_and_a_live_one_respected(tmp_path):
    import subprocess
    import sys

    from clap_edge.core.io import LOCK, _host

    proc = subprocess.Popen([sys.executable, "-c", "import os; print(os.getpid())"], stdout=subprocess.PIPE, text=True)
    dead = int(proc.communicate()[0])
    lock = tmp_path / f"{LOCK}out"
    lock.write_text(f"{dead}@{_host()}\n")  # left by a killed export
    with atomic_directory(tmp_path / "out") as d:
        (d / "f").write_text("1")
    assert (tmp_path / "out" / "f").exists() and not lock.exists()
    lock.write_text(f"{os.getppid()}@{_host()}\n")  # a live process holds it
    with pytest.raises(OutputError, match=rf"pid {os.getppid()}\) is writing it"):
        with atomic_directory(tmp_path / "out", overwrite=True):
            pass
    assert lock.exists()  # not ours to remove


def test_a_killed_writer_leaves_debris_that_the_next_export_removes(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    code = ("import sys, time; from clap_edge.core.io import atomic_directory\n"
            "with atomic_directory(sys.argv[1]) as d:\n"
            "    (d / 'model.onnx').write_bytes(b'half'); print('ready', flush=True); time.sleep(60)\n")
    target = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    assert proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    debris = sorted(p.name for p in tmp_path.iterdir())
    assert not target.exists() and len(debris) == 2, debris  # its staging folder and its lock
    assert any(n.startswith(f".clap-edge-staging-{proc.pid}@") for n in debris)
    deadline = time.time() + 5
    while time.time() < deadline:  # the claim is free at once: its holder is gone
        try:
            with atomic_directory(target) as d:
                (d / "model.onnx").write_bytes(b"whole")
            break
        except OutputError:
            time.sleep(0.1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (target / "model.onnx").read_bytes() == b"whole"


def test_manifest_swapped_after_the_signature_check_is_refused(signed, keys, tmp_path, monkeypatch):
    """The check and the load are two reads: a manifest (with its digest) rewritten between them is refused,
    and a model file swapped after the check is caught when it is loaded."""
    import clap_edge.export.bundle.signing as signing

    bundle = _copy(signed, tmp_path)
    data = json.loads((bundle / MANIFEST).read_text())
    data["class_names"] = list(reversed(data["class_names"]))  # forged labels, with a matching digest
    real_verify = signing.verify_signature

    def verify_then_swap(*args, **kwargs):
        check = real_verify(*args, **kwargs)
        write_manifest(bundle, data)
        return check

    monkeypatch.setattr(signing, "verify_signature", verify_then_swap)
    with pytest.raises(BundleError, match="changed after its signature was checked"):
        Bundle.open(bundle, trusted_keys=[keys / "alice.pub"])
    monkeypatch.undo()

    model = _copy(signed, tmp_path, "model-swap")
    opened = Bundle.open(model, trusted_keys=[keys / "alice.pub"])
    with open(model / "model.onnx", "r+b") as f:
        f.seek(-3, 2)
        f.write(b"zzz")
    with pytest.raises(BundleError, match="'model.onnx' is corrupt or was modified"):
        opened.file("model.onnx")
