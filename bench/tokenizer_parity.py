"""Full tokenizer parity: clap_edge.core.tokenizer vs open_clip's SimpleTokenizer on the 10,000-string corpus.

    python bench/tokenizer_parity.py [--n 10000] [--out bench/results/tokenizer_parity.json]

For each covered model (clap-edge-tiny: context 32, ViT-B-32: context 77) the ids of every string must be
identical; the JSON records the counts, the wall and CPU seconds of both tokenizers, the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def machine() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    return {"cpu": fields.get("Model name", "").strip(), "cpus": os.cpu_count(), "flags": fields.get("Flags", "").strip(),
            "python": platform.python_version(), "loadavg": os.getloadavg()}


def timed(fn, *a):
    w, c = time.perf_counter(), time.process_time()
    out = fn(*a)
    return out, round(time.perf_counter() - w, 3), round(time.process_time() - c, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--out", default="bench/results/tokenizer_parity.json")
    args = ap.parse_args()
    import open_clip
    from open_clip.tokenizer import default_bpe

    import clap_edge.models  # noqa: F401  (registers clap-edge-tiny)
    from clap_edge.core.tokenizer import SimpleTokenizer, spec_from_open_clip
    from tokenizer_corpus import corpus

    texts = corpus(args.n, seed=0)
    results = {"n_strings": len(texts), "corpus": "tests/tokenizer_corpus.py corpus(n, seed=0)", "models": {}}
    for name in ("clap-edge-tiny", "ViT-B-32"):
        ref = open_clip.get_tokenizer(name)
        mine = SimpleTokenizer.from_spec(spec_from_open_clip(ref), default_bpe())
        want, ref_wall, ref_cpu = timed(lambda t: ref(t).numpy(), texts)
        got, wall, cpu = timed(mine, texts)
        differ = int((want != got).any(axis=1).sum())
        truncated = int(sum(len(mine.encode(t)) + 2 > mine.context_length for t in texts))
        results["models"][name] = {"context_length": mine.context_length, "strings_differing": differ,
                                   "strings_truncated": truncated, "open_clip_wall_s": ref_wall,
                                   "open_clip_cpu_s": ref_cpu, "clap_edge_wall_s": wall, "clap_edge_cpu_s": cpu}
        print(f"{name}: {differ} of {len(texts)} differ ({truncated} truncated); open_clip {ref_wall}s, "
              f"clap-edge {wall}s", file=sys.stderr)
    results["machine"] = machine()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    if any(m["strings_differing"] for m in results["models"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
