"""The import order of docs/architecture.md, enforced by reading every module's imports with ``ast``.

    core  <-  training  <-  export  <-  runtime  <-  apps

Every ``import``/``from ... import`` counts, the ones inside functions included (a lazy import is still an
import); ``from . import x`` is resolved; importing ``a.b.c`` also imports the packages ``a`` and ``a.b``.
A string constant that names one of our modules (``importlib.import_module("clap_edge.x")`` tables) counts
for the room order but not for reachability: those are the lazy registries (backends, ``clap_edge.export``'s
``export_bundle``) that load a module only when asked for it by name.

Run ``python tests/test_architecture.py`` to print the module tree for docs/architecture.md.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"

# folder in the repository -> the dotted package it installs as
SOURCES = {"clap_edge": "clap_edge", "export": "clap_edge.export", "runtime": "clap_edge.runtime"}
ROOMS = ["core", "training", "export", "runtime", "apps"]

# Backends that run torch programs: the only runtime modules that may reach torch. (ExecuTorch's Python
# runtime takes and returns torch tensors; the .pte itself runs without torch on a device.)
TORCH_BACKENDS = ["clap_edge.runtime.backends.torch", "clap_edge.runtime.backends.aoti",
                  "clap_edge.runtime.backends.tensorrt", "clap_edge.runtime.backends.executorch"]
TORCH_LIBS = {"torch", "torchvision", "open_clip", "open_clip_train"}
APP_LIBS = {"rich", "click"}
# What `pip install clap-edge` (the edge runtime) brings, besides the standard library: pyproject's dependencies.
BASE_LIBS = {"numpy", "PIL", "onnxruntime", "safetensors", "click", "rich", "ftfy", "regex"}  # ftfy, regex: the tokenizer
# Heavy libraries: never imported at module level in core, runtime or apps (only inside the loader that needs them).
HEAVY_LIBS = TORCH_LIBS | {"executorch", "ai_edge_litert", "litert_torch", "tensorrt", "openvino", "ray", "tritonclient", "nncf", "onnx", "onnxscript", "matplotlib",
                           "model_signing", "cryptography", "cuda", "pyarrow", "starlette"}
# Optional in core/runtime, imported lazily by the one function that needs it (plots: the [train] extra has it).
# optional features imported inside the function that needs them, with a one-line error naming the extra
OPTIONAL_LAZY = {"matplotlib", "model_signing", "cryptography",  # plots; signed bundles ([sign])
                 "cuda",  # cuda-python ([gpu]): GPU lookup for engine selection
                 "ray", "pyarrow", "starlette"}  # runtime/scale adapters ([serve])


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    imports: set[str] = field(default_factory=set)          # every import, any depth
    top_level_imports: set[str] = field(default_factory=set)  # executed when the module is imported
    named: set[str] = field(default_factory=set)             # our modules named in string constants

    @property
    def rel(self) -> str:
        return self.path.relative_to(ROOT).as_posix()


def room(name: str) -> str:
    # The root package __init__ is imported by every submodule, so it must stay in core (it is stdlib-only).
    if name == "clap_edge" or name.startswith("clap_edge.core"):
        return "core"
    for prefix in ("export", "runtime", "apps"):
        if name == f"clap_edge.{prefix}" or name.startswith(f"clap_edge.{prefix}."):
            return prefix
    return "training"


def _files() -> list[tuple[str, Path]]:
    out = []
    for folder, package in SOURCES.items():
        base = ROOT / folder
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base)
            # the worktree's clap_edge/export and clap_edge/runtime links point at the folders walked anyway
            if folder == "clap_edge" and rel.parts[0] in ("export", "runtime") and (base / rel.parts[0]).is_symlink():
                continue
            if "__pycache__" in rel.parts:
                continue
            parts = [package, *rel.with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out.append((".".join(parts), path))
    return out


def _with_parents(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def _parse(name: str, path: Path, known: set[str]) -> Module:
    module = Module(name, path, path.name == "__init__.py")
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if module.is_package else name.rpartition(".")[0]
    top_level = set()
    for node in tree.body:  # statements run at import (including under if/try at module level)
        top_level.update(id(n) for n in ast.walk(node)
                         if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
        for fn in ast.walk(node):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                top_level.difference_update(id(n) for n in ast.walk(fn))
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [source]
            # `from pkg import sub` imports the submodule when it is one of ours
            targets += [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in known]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in known:
            module.named.add(node.value)
        for target in targets:
            expanded = _with_parents(target)
            module.imports |= expanded
            if id(node) in top_level:
                module.top_level_imports |= expanded
    return module


@lru_cache(maxsize=1)
def modules() -> dict[str, Module]:
    files = _files()
    known = {name for name, _ in files}
    return {name: _parse(name, path, known) for name, path in files}


def ours(name: str) -> bool:
    return name == "clap_edge" or name.startswith("clap_edge.")


def reachable(start: str) -> set[str]:
    """Every module (ours and third-party) that importing ``start`` can import, at any depth."""
    mods = modules()
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in mods:
            todo.extend(mods[name].imports)
    return seen


def _torch_backend(name: str) -> bool:
    return any(name == b or name.startswith(b + ".") for b in TORCH_BACKENDS)


def _in_backend_folder(name: str) -> bool:
    """runtime/backends/<name>/...: a backend's own library may be imported there (inside its loader)."""
    return name.startswith("clap_edge.runtime.backends.") and name.count(".") >= 4


def _root(name: str) -> str:
    return name.split(".")[0]


def test_modules_found():
    mods = modules()
    for expected in ("clap_edge.core.errors", "clap_edge.apps.cli", "clap_edge.export.bundle",
                     "clap_edge.runtime.backends.onnxruntime.runner", "clap_edge.runtime.classifier"):
        assert expected in mods
    assert {room(n) for n in mods} == set(ROOMS)


def test_no_import_to_the_right():
    bad = []
    for name, mod in modules().items():
        mine = ROOMS.index(room(name))
        for target in sorted(mod.imports | mod.named):
            # a submodule's parent package is imported with it; parents of our rooms are core by construction
            if ours(target) and ROOMS.index(room(target)) > mine:
                bad.append(f"{mod.rel} ({room(name)}) imports {target} ({room(target)})")
    assert not bad, "imports against the order core <- training <- export <- runtime <- apps:\n" + "\n".join(bad)


def _core_and_runtime(exempt) -> list[tuple[str, Module]]:
    return [(n, m) for n, m in modules().items() if room(n) in ("core", "runtime") and not exempt(n)]


EXPORT_CONTRACT = "clap_edge.export.bundle"  # the one part of export the runtime may import: the bundle contract


def _outside_contract(target: str) -> bool:
    """An export module other than the bundle package (``clap_edge.export`` itself is only a parent package)."""
    return (room(target) == "export" and target != "clap_edge.export"
            and not (target == EXPORT_CONTRACT or target.startswith(EXPORT_CONTRACT + ".")))


def runtime_export_violations(mods: dict[str, Module]) -> list[str]:
    """Runtime modules importing (or naming) anything from export but ``clap_edge.export.bundle``, directly or
    through what they import (e.g. an eager import in ``clap_edge.export``'s ``__init__``)."""
    bad = []
    for name, mod in mods.items():
        if room(name) != "runtime":
            continue
        direct = {t for t in mod.imports | mod.named if _outside_contract(t)}
        bad += [f"{mod.rel} imports {t}" for t in sorted(direct)]
        seen, todo = set(), [t for t in mod.imports if ours(t) and room(t) == "export"]
        while todo:  # through export's own modules (the bundle, clap_edge.export itself)
            t = todo.pop()
            if t in seen or t not in mods:
                continue
            seen.add(t)
            todo += [u for u in mods[t].imports if ours(u)]
            bad += [f"{mod.rel} reaches {u} through {t}" for u in sorted(mods[t].imports)
                    if _outside_contract(u) and u not in direct]
    return sorted(set(bad))


def test_runtime_imports_only_the_bundle_from_export():
    bad = runtime_export_violations(modules())
    assert not bad, "the runtime imports only clap_edge.export.bundle from export:\n" + "\n".join(bad)


def test_runtime_export_rule_catches_a_planted_violation(tmp_path):
    """The rule itself: a lazy import of a builder from a runtime module is reported, the bundle is not."""
    planted = tmp_path / "planted.py"
    planted.write_text("from clap_edge.export.bundle import Bundle\n\n"
                       "def f():\n    from clap_edge.export.builders.engines import aoti\n")
    known = set(modules()) | {"clap_edge.runtime.planted"}
    mod = _parse("clap_edge.runtime.planted", planted, known)
    mod.path = ROOT / "runtime" / "planted.py"  # rel() is relative to the repository
    bad = runtime_export_violations({**modules(), mod.name: mod})
    assert bad == ["runtime/planted.py imports clap_edge.export.builders",
                   "runtime/planted.py imports clap_edge.export.builders.engines",
                   "runtime/planted.py imports clap_edge.export.builders.engines.aoti"]
    # and through the bundle: an eager builder import there reaches the runtime too
    bundle_init = _parse("clap_edge.export.bundle", ROOT / "export" / "bundle" / "__init__.py", known)
    bundle_init.imports.add("clap_edge.export.parity")
    clean = tmp_path / "clean.py"
    clean.write_text("from clap_edge.export.bundle import Bundle\n")
    only = _parse("clap_edge.runtime.clean", clean, known | {"clap_edge.runtime.clean"})
    only.path = ROOT / "runtime" / "clean.py"
    bad = runtime_export_violations({**modules(), bundle_init.name: bundle_init, only.name: only})
    assert "runtime/clean.py reaches clap_edge.export.parity through clap_edge.export.bundle" in bad


def manifest_dict_walks(path: Path) -> list[str]:
    """``manifest[...]`` / ``manifest.get(...)`` (also ``x.manifest[...]``): walking the manifest as raw JSON."""
    def is_manifest(node: ast.AST) -> bool:
        return (isinstance(node, ast.Name) and node.id == "manifest") or (
            isinstance(node, ast.Attribute) and node.attr == "manifest")

    hits = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Subscript) and is_manifest(node.value):
            hits.append(node.lineno)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
              and is_manifest(node.func.value)):
            hits.append(node.lineno)
    return [f"{path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path}:{n}" for n in sorted(hits)]


def test_no_manifest_dict_walks_outside_the_bundle():
    """Bundle.manifest is a typed Manifest; only export/bundle/ reads or writes the JSON form."""
    bad = [hit for name, mod in modules().items() if not name.startswith(EXPORT_CONTRACT)
           for hit in manifest_dict_walks(mod.path)]
    assert not bad, "manifest walked as a dict outside export/bundle (use the typed Manifest):\n" + "\n".join(bad)


def test_manifest_walk_rule_catches_a_planted_walk(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("def f(bundle, manifest):\n    a = bundle.manifest['files']\n"
                       "    b = manifest.get('engines')\n    return bundle.manifest.files, a, b\n")
    assert [h.rsplit(":", 1)[1] for h in manifest_dict_walks(planted)] == ["2", "3"]


def test_core_and_runtime_never_reach_torch():
    bad = []
    for name, mod in _core_and_runtime(exempt=_torch_backend):
        hits = sorted(t for t in reachable(name) if _root(t) in TORCH_LIBS)
        if hits:
            path = [t for t in reachable(name) if t in modules() and modules()[t].imports & set(hits)]
            bad.append(f"{mod.rel}: reaches {', '.join(hits)} (imported by {', '.join(sorted(path))})")
    assert not bad, "torch/open_clip reachable from core or runtime:\n" + "\n".join(bad)


def test_core_and_runtime_need_only_the_base_install():
    """Outside a backend's own folder, core and runtime reach only the stdlib and pyproject's base dependencies."""
    allowed = sys.stdlib_module_names | BASE_LIBS | OPTIONAL_LAZY
    bad = []
    for name, mod in _core_and_runtime(exempt=_in_backend_folder):
        seen = reachable(name)
        backends_libs = {t for b in seen if _in_backend_folder(b) and b in modules() for t in modules()[b].imports}
        # a backend's own library is imported inside its loader (test_heavy_libraries_imported_lazily)
        bad += [f"{mod.rel}: reaches {t}, which the base install lacks" for t in sorted(seen - backends_libs)
                if not ours(t) and _root(t) not in allowed]
    assert not bad, "\n".join(bad)


def test_rich_and_click_only_in_apps():
    bad = [f"{m.rel} imports {t}" for n, m in modules().items() if room(n) != "apps"
           for t in sorted(m.imports) if _root(t) in APP_LIBS]
    assert not bad, "rich and click live only in apps:\n" + "\n".join(bad)


def test_heavy_libraries_imported_lazily():
    bad = [f"{m.rel} imports {t} at module level" for n, m in modules().items()
           if (room(n) in ("core", "runtime", "apps") or n.startswith("clap_edge.export.bundle"))
           for t in sorted(m.top_level_imports) if _root(t) in HEAVY_LIBS]
    assert not bad, "heavy libraries are imported inside the function that needs them:\n" + "\n".join(bad)


def test_checker_sees_lazy_and_relative_imports(tmp_path):
    """The walker itself: a function-level import, a relative import and a parent package are all seen."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n\ndef f():\n    import torch.nn\n")
    known = {"pkg", "pkg.a", "pkg.b"}
    mod = _parse("pkg.a", pkg / "a.py", known)
    assert {"pkg", "pkg.b", "torch", "torch.nn"} <= mod.imports
    assert "torch" not in mod.top_level_imports and "pkg.b" in mod.top_level_imports


# -- docs/architecture.md lists every module, one per line, and nothing that is gone --------------------------

def _doc_tree() -> str:
    lines = []
    for name, mod in sorted(modules().items(), key=lambda kv: kv[1].rel):
        doc = ast.get_docstring(ast.parse(mod.path.read_text())) or ""
        summary = doc.strip().splitlines()[0] if doc.strip() else ""
        lines.append(f"- `{mod.rel}` [{room(name)}] {summary}".rstrip())
    return "\n".join(lines)


def _doc_rooms() -> dict[str, str]:
    import re

    return dict(re.findall(r"^- `([^`]+\.py)` \[(\w+)\]", DOC.read_text(), flags=re.M))


def test_architecture_doc_lists_every_module():
    assert DOC.exists(), "docs/architecture.md is missing"
    listed = _doc_rooms()
    actual = {m.rel: room(n) for n, m in modules().items()}
    missing, gone = sorted(set(actual) - set(listed)), sorted(set(listed) - set(actual))
    moved = sorted(f"{p} is in {actual[p]}" for p in set(actual) & set(listed) if actual[p] != listed[p])
    assert not missing and not gone and not moved, (
        f"docs/architecture.md is out of date (python tests/test_architecture.py prints the tree): "
        f"missing {missing}, no longer exist {gone}, wrong room {moved}")


if __name__ == "__main__":
    print(_doc_tree())
