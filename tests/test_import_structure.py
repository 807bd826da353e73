"""The package's import structure, read from the source: no import circles, no project import
inside a function (to dodge a circle or otherwise), every import downward in the layers that
docs/development.md lists. (That the lab is never imported: tests/test_packaging.py.)"""

from __future__ import annotations

import textwrap
from pathlib import Path

from import_graph import Import, documented_layers, import_circles, layer_of, package_modules, project_imports

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "threestudio_like"
DEVELOPMENT_MD = ROOT / "docs" / "development.md"

# Imports inside a function that are the point of that function, not a way round a circle.
DELIBERATE_LATE_IMPORTS = {
    # the console script imports the CLI (torch, Lightning: seconds) under its Ctrl-C guard
    ("threestudio_like.entry", "threestudio_like.cli"),
}


def test_no_import_circles() -> None:
    assert import_circles(project_imports(PACKAGE)) == []


def test_no_project_module_is_imported_inside_a_function() -> None:
    late = [
        f"{i.source}:{i.line} imports {i.target}"
        for i in project_imports(PACKAGE)
        if i.in_function and (i.source, i.target) not in DELIBERATE_LATE_IMPORTS
    ]
    assert late == []


def test_every_module_sits_in_one_documented_layer_and_imports_only_downward() -> None:
    layers = documented_layers(DEVELOPMENT_MD)
    assert len(layers) >= 5, "docs/development.md lost its layer table"
    unplaced = [m for m in package_modules(PACKAGE) if layer_of(m, layers, "threestudio_like") is None]
    assert unplaced == [], "add these modules to the layer table in docs/development.md"
    upward = []
    for i in project_imports(PACKAGE):
        source, target = (layer_of(m, layers, "threestudio_like") for m in (i.source, i.target))
        if target < source:  # 0 is the top layer
            upward.append(f"{i.source} ({layers[source][0]}) imports {i.target} ({layers[target][0]})")
    assert upward == []


def test_the_checks_see_circles_late_imports_and_layers(tmp_path: Path) -> None:
    """The analysis itself: a small package with a circle made of a late import, and a table."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "low.py": "def f():\n    from pkg.high import g\n",
        "high.py": "from pkg import low\nfrom .sub.leaf import x\n",
        "sub/__init__.py": "",
        "sub/leaf.py": "import os\nx = 1\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    imports = project_imports(pkg)
    assert Import("pkg.low", "pkg.high", 2, True) in imports
    assert Import("pkg.high", "pkg.sub.leaf", 2, False) in imports
    assert import_circles(imports) == [["pkg.high", "pkg.low"]]
    doc = tmp_path / "development.md"
    doc.write_text(textwrap.dedent("""\
        | layer | modules | why |
        |---|---|---|
        | top | `high` | uses the rest |
        | bottom | `low`, `sub.*`, `sub`, `__init__` | |
    """))
    layers = documented_layers(doc)
    assert [name for name, _ in layers] == ["top", "bottom"]
    assert layer_of("pkg.sub.leaf", layers, "pkg") == 1 and layer_of("pkg.high", layers, "pkg") == 0
