"""The README, read as a new user reads it: every ``clap-edge`` command in its fenced blocks exists, with every
flag it uses (checked against the command's parameters and its ``--help`` text), and every repository file it
cites (``bench/results/*.json``, scripts, tests, docs) is there. New README text is covered as it is added.

In-process through click's CliRunner (``--help`` imports nothing heavy); one subprocess runs the installed
console script, so a broken entry point is caught too.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from clap_edge.apps.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHELL_LANGS = {"", "bash", "sh", "shell", "console"}
SEPARATORS = {"&&", "||", "|", ";", "&", "(", ")"}


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return [(m.group(1).strip().lower(), m.group(2)) for m in re.finditer(r"^```([^\n]*)\n(.*?)^```", text,
                                                                          re.S | re.M)]


def shell_commands(body: str) -> list[list[str]]:
    """Every simple command of a shell block as tokens: continuations joined, comments dropped, split at
    ``&&``, ``|``, ``;``; leading ``VAR=value`` assignments skipped."""
    commands = []
    for line in body.replace("\\\n", " ").splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split, lex.commenters = True, "#"
        segment: list[str] = []
        for token in [*lex, ";"]:
            if token in SEPARATORS:
                while segment and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", segment[0]):
                    segment.pop(0)
                if segment:
                    commands.append(segment)
                segment = []
            else:
                segment.append(token)
    return commands


def readme_cli_commands(text: str) -> list[list[str]]:
    """The arguments of every ``clap-edge ...`` command in the README's shell blocks."""
    return [cmd[1:] for lang, body in fenced_blocks(text) if lang in SHELL_LANGS
            for cmd in shell_commands(body) if cmd[0] == "clap-edge"]


def resolve(args: list[str]) -> tuple[list[str], click.Command, list[str]]:
    """(command path, the click command, the remaining arguments) for ``clap-edge ARGS``."""
    command: click.Command = main
    path: list[str] = []
    rest = list(args)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        assert name in command.commands, f"`clap-edge {' '.join(path + [name])}` is in the README but not a command"
        command = command.commands[name]
        path.append(name)
    return path, command, rest


def flags(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("-") and a != "-" and not re.match(r"^-\d", a)]


def option_names(command: click.Command) -> set[str]:
    return {o for p in command.params for o in (*p.opts, *getattr(p, "secondary_opts", ()))} | {"--help", "-h"}


COMMANDS = readme_cli_commands(README.read_text(encoding="utf-8"))


def test_the_readme_parser_finds_commands_flags_and_skips_comments():
    text = ("```bash\nFOO=1 clap-edge eval data/ --head h.safetensors \\\n    --out o  # a comment --not-a-flag\n"
            "pip install x && clap-edge models | grep ViT\n```\n```python\nclap-edge = 1\n```\n")
    assert readme_cli_commands(text) == [["eval", "data/", "--head", "h.safetensors", "--out", "o"], ["models"]]
    assert flags(["--a=1", "-b", "-", "-3", "x"]) == ["--a", "-b"]
    assert len(COMMANDS) >= 20, "the README's commands were not found: did the fences change?"


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_readme_command_exists_with_every_flag(args):
    path, command, rest = resolve(args)
    help_result = CliRunner().invoke(main, [*path, "--help"])
    assert help_result.exit_code == 0, help_result.output
    known = option_names(command)
    for flag in flags(rest):
        assert flag in known, f"`clap-edge {' '.join(path)}` has no option {flag} (README: {' '.join(args)})"
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_result.output), \
            f"{flag} is not in `clap-edge {' '.join(path)} --help`"
    # the arguments parse as written (types and paths are checked when the command runs, not here)
    command.make_context(" ".join(["clap-edge", *path]), list(rest), resilient_parsing=True)


def test_every_command_has_help_ending_with_an_example():
    def walk(command: click.Command, path: list[str]):
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, path + [name])

    for path, command in walk(main, []):
        out = CliRunner().invoke(main, [*path, "--help"]).output
        assert "Example" in out.strip().split("\n\n")[-1], f"`clap-edge {' '.join(path)} --help` ends without an example"


CITED = re.compile(r"(?<![\w./-])((?:bench|tests|docs|export|runtime|clap_edge|\.ci)/[\w./*-]*[\w*])")
# Cited paths that a documented step creates (not committed): path -> what writes it.
GENERATED = {"bench/gpu/wheels": "bench/gpu/fetch_wheels.sh"}


def prose(text: str) -> str:
    """The README without its fenced blocks (whose paths are examples: outputs, includes)."""
    return re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)


def test_every_repository_file_the_readme_cites_exists():
    text = prose(README.read_text(encoding="utf-8"))
    missing = []
    for cited in sorted(set(CITED.findall(text)) - set(GENERATED)):
        if cited.endswith("/") or not re.search(r"\.\w+$|\*", cited) and not (ROOT / cited).is_dir():
            if not (ROOT / cited).exists():
                missing.append(cited)
            continue
        if not any(ROOT.glob(cited)) and not (ROOT / cited).exists():
            missing.append(cited)
    assert not missing, f"the README cites files that are not in the repository: {missing}"
    for path, writer in GENERATED.items():
        assert (ROOT / writer).is_file(), f"{path} is said to come from {writer}, which is gone"


def test_figures_cite_a_results_file():
    """A Results paragraph quoting a speed-up or throughput figure names the bench/results JSON it comes from
    (or bench/README.md, which does), itself or earlier in its block (from the last paragraph opening in bold)."""
    text = README.read_text(encoding="utf-8")
    results_section = text.split("## Results", 1)[-1].split("\n## ", 1)[0]
    block_cites = False
    for paragraph in re.split(r"\n\s*\n", results_section):
        cites = "bench/results/" in paragraph or "bench/README.md" in paragraph
        block_cites = cites or (block_cites and not paragraph.startswith("**"))
        if re.search(r"\d(\.\d+)?x\b|\bimg/s\b|images/s", paragraph):
            assert block_cites, f"a figure without its bench/results file: {paragraph[:200]}"


def test_console_script_runs():
    """The installed entry point itself (the one subprocess): `clap-edge --version` and a one-line usage error."""
    exe = shutil.which("clap-edge")
    if exe is None:
        pytest.skip("the clap-edge console script is not on PATH (not installed with pip)")
    ok = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "clap-edge" in ok.stdout
