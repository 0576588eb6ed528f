#!/usr/bin/env bash
# Mutation testing (mutmut 3) of the bundle contract: signing, manifest, reader and engine selection,
# against their fast unit tests. Not in CI: a full run is ~1-2 CPU-hours on a 2-core machine.
#
#   bench/mutation.sh                      # every target module below
#   bench/mutation.sh export/bundle/manifest.py     # one module (repo paths)
#   MUTATION_MAX_CHILDREN=1 MUTATION_WORK=/tmp/mut bench/mutation.sh ...
#
# mutmut names mutants by file path and records them by module name, so it needs a plain package layout;
# the repo installs export/ and runtime/ as clap_edge.export / clap_edge.runtime. The script therefore
# mutates a throw-away copy laid out as the installed package (clap_edge/export, clap_edge/runtime), so
# the repo itself is never touched. Results: $MUTATION_WORK/mutmut-results.txt (+ `mutmut show <name>`
# run inside $MUTATION_WORK for any survivor's diff).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${MUTATION_WORK:-$(mktemp -d /tmp/clap-edge-mutation.XXXXXX)}"
CHILDREN="${MUTATION_MAX_CHILDREN:-2}"
DEFAULT_TARGETS=(export/bundle/signing.py export/bundle/manifest.py export/bundle/reader.py export/bundle/engines.py
                 runtime/backends/engines.py)
TARGETS=("${@:-${DEFAULT_TARGETS[@]}}")
# their fast unit tests (MUTATION_TESTS="tests/a.py tests/b.py" to narrow)
read -ra TESTS <<< "${MUTATION_TESTS:-tests/test_manifest_schema.py tests/test_trust.py tests/test_engines.py
  tests/test_survivors.py tests/test_mutation_kills.py}"

python -c "import mutmut" 2>/dev/null || { echo "mutation.sh: needs mutmut (pip install 'mutmut>=3.3')" >&2; exit 2; }

# the copy: clap_edge/ with export/ and runtime/ moved to where they install, plus the tests
rm -rf "$WORK/clap_edge" "$WORK/tests" "$WORK/mutants"
mkdir -p "$WORK"
cp -a "$ROOT/clap_edge" "$WORK/clap_edge"
cp -a "$ROOT/export" "$WORK/clap_edge/export"
cp -a "$ROOT/runtime" "$WORK/clap_edge/runtime"
rm -rf "$WORK/clap_edge/runtime/cpp"  # native sources: not Python, not mutated
cp -a "$ROOT/tests" "$WORK/tests"
find "$WORK" -name __pycache__ -prune -exec rm -rf {} +
# Each mutant runs its tests in a fresh pytest session, which would export the tiny bundle again
# (~10 s). Export it once here, with the unmutated code, and let the session fixture copy it.
mkdir -p "$WORK/.cache"
if [ ! -d "$WORK/.cache/runtime-bundle" ]; then
  (cd "$ROOT" && python - "$WORK/.cache/runtime-bundle" <<'PY'
import sys
import torch
from clap_edge.export.builders.exporter import ExportConfig, export_bundle
torch.manual_seed(0)  # as tests/conftest.py's runtime_bundle
export_bundle(ExportConfig(out=sys.argv[1], model_name="clap-edge-tiny", classes=["cat", "dog", "car", "tree", "boat"],
                           int8=True))
PY
  ) > "$WORK/.cache/export.log" 2>&1
fi
cat >> "$WORK/tests/conftest.py" <<PY


# ---- added by bench/mutation.sh: the session bundle is a copy of one exported before the run ----
@pytest.fixture(scope="session")
def runtime_bundle(tmp_path_factory):
    import shutil

    out = tmp_path_factory.mktemp("runtime") / "tiny-bundle"
    shutil.copytree("$WORK/.cache/runtime-bundle", out)
    return out
PY

to_pkg() { case "$1" in export/*|runtime/*) echo "clap_edge/$1" ;; *) echo "$1" ;; esac; }
quote() { local out=() x; for x in "$@"; do out+=("\"$x\""); done; (IFS=,; echo "${out[*]}"); }
mutate=(); for t in "${TARGETS[@]}"; do mutate+=("$(to_pkg "$t")"); done
tests=(); for t in "${TESTS[@]}"; do [ -f "$WORK/$t" ] && tests+=("$t"); done

cp "$ROOT/pyproject.toml" "$WORK/pyproject.toml"  # pytest's markers and options, as in the repo
cat >> "$WORK/pyproject.toml" <<TOML

[tool.mutmut]
source_paths = ["clap_edge/"]
only_mutate = [$(quote "${mutate[@]}")]
pytest_add_cli_args_test_selection = [$(quote "${tests[@]}")]
pytest_add_cli_args = ["-m", "not slow", "-p", "no:cacheprovider", "-q", "-x"]
timeout_multiplier = 5.0
use_git_change_detection = false
debug = ${MUTATION_DEBUG:-false}
process_isolation = "fork"
TOML

cd "$WORK"
# the mutated copy, not the repo or its editable install, is what the tests import: an editable install's
# finder maps clap_edge.export to the repo's export/, so a finder ahead of it maps the three packages here
mkdir -p "$WORK/.shim"
cat > "$WORK/.shim/sitecustomize.py" <<PY
import importlib.util, os, sys
_ROOT = "$WORK/mutants/clap_edge"
_MAP = {"clap_edge": _ROOT, "clap_edge.export": _ROOT + "/export", "clap_edge.runtime": _ROOT + "/runtime"}
class _MutantsFinder:
    @staticmethod
    def find_spec(name, path=None, target=None):
        folder = _MAP.get(name)
        if folder is None or not os.path.isdir(folder):
            return None
        return importlib.util.spec_from_file_location(name, folder + "/__init__.py", submodule_search_locations=[folder])
sys.meta_path.insert(0, _MutantsFinder())
PY
unset CLAP_EDGE_DEV_ROOT
export PYTHONPATH="$WORK/.shim:$WORK/mutants"
start=$(date +%s)
mutmut run --max-children "$CHILDREN" || true
mutmut results --all true > mutmut-results.txt 2>&1 || mutmut results > mutmut-results.txt 2>&1 || true
echo "mutation.sh: $(($(date +%s) - start)) s; results in $WORK/mutmut-results.txt"
grep -c ": killed" mutmut-results.txt | sed 's/^/killed: /' || true
grep -vc ": killed" mutmut-results.txt | sed 's/^/not killed: /' || true
