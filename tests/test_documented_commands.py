"""Every ``threestudio-like`` command in README.md and docs/ passes ``--check`` (nothing is
written), so no documented command rots. A command may name an input the reader brings or an
earlier stage makes (``/path/to/...``, ``<trial>``, ``...@LAST``, a converted folder); then the one
error allowed is the one that names that input: every key and value before it was checked."""

from __future__ import annotations

import glob
import os
import re
import shlex

import pytest

from threestudio_like.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLACEHOLDER = re.compile(r"/path/to/|<[^>]+>|@LAST|^models/")


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, arguments after the program name) of every command in a fenced block."""
    commands = []
    for path in [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))]:
        text = open(path).read()
        for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("#", 1)[0] if line.lstrip().startswith("#") else line
                if "threestudio-like --config" in line:
                    line = re.sub(r"<[^>]+>", lambda m: m.group(0).replace(" ", "-"), line)  # <a trial> is one word
                    args = shlex.split(line[line.index("threestudio-like --config"):])[1:]
                    commands.append((f"{os.path.relpath(path, ROOT)}: {line.strip()[:80]}", args))
    return commands


COMMANDS = documented_commands()


def test_the_documents_hold_commands() -> None:
    assert len(COMMANDS) >= 8  # the recipe commands of the README at least


@pytest.mark.parametrize("where, args", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_a_documented_command_passes_check(where, args, capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(ROOT)
    code = main([*args, "--check", f"exp_root_dir={tmp_path / 'outputs'}"])
    captured = capsys.readouterr()
    placeholders = [a.split("=", 1)[-1] for a in args if PLACEHOLDER.search(a.split("=", 1)[-1])]
    if code != 0:
        named = [p for p in placeholders if p.split("@LAST")[0].rstrip("/") in captured.err or p in captured.err]
        assert code == 2 and named, f"{where}\n{captured.err}"
    else:
        assert "Nothing was written." in captured.out
    assert not (tmp_path / "outputs").exists()


def _documents() -> list[str]:
    return [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))]


def _without_code(text: str) -> str:
    """The text outside fenced blocks and inline code spans (links there are not links)."""
    text = re.sub(r"^\s*```.*?^\s*```[^\n]*$", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(path: str) -> set[str]:
    """GitHub's heading anchors: lower-case, punctuation dropped, spaces to '-', repeats -1, -2, ..."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", _without_code(open(path).read()), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_the_readme_is_short() -> None:
    with open(os.path.join(ROOT, "README.md")) as f:
        assert len(f.read().splitlines()) <= 250


def test_every_relative_link_points_at_a_file_and_heading() -> None:
    broken, links = [], 0
    for path in _documents():
        text = _without_code(open(path).read())
        for target in re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target, flags=re.I):  # https:, mailto:
                continue
            links += 1
            file, _, anchor = target.partition("#")
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            where = f"{os.path.relpath(path, ROOT)}: ({target})"
            if not os.path.exists(resolved):
                broken.append(f"{where}: no such file")
            elif anchor and (not resolved.endswith(".md") or anchor not in _anchors(resolved)):
                broken.append(f"{where}: no heading #{anchor}")
    assert links >= 10  # the README's links to docs/ at least
    assert not broken, "\n".join(broken)
