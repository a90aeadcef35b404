"""Every third-party module the package (and the scripts the README runs) imports is declared.

Walks the imports with ast, maps each top-level module to the distributions that provide it
(importlib.metadata), and fails on a module that no requirement in pyproject.toml provides: a
fresh install would then die with ModuleNotFoundError.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[1]
#: what the README tells users to run besides the package
README_SCRIPTS = ("scripts/make_figure.py", "scripts/make_examples.py", "scripts/merge_datasets.py")


def _requirement_names(requirements: list[str]) -> set[str]:
    return {_canonical(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in requirements}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def _third_party(files: list[Path]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for f in files:
        for name in _imports(f):
            if name in sys.stdlib_module_names or name in ("defocus_cli", "tests", "__future__"):
                continue
            found.setdefault(name, []).append(str(f.relative_to(REPO)))
    return found


def _undeclared(found: dict[str, list[str]], declared: set[str]) -> list[str]:
    providers = md.packages_distributions()
    missing = []
    for module, where in sorted(found.items()):
        dists = {_canonical(d) for d in providers.get(module, [])}
        if not dists & declared:
            missing.append(f"{module} (imported by {', '.join(sorted(set(where))[:3])}; provided by "
                           f"{', '.join(sorted(dists)) or 'nothing installed'})")
    return missing


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_package_imports_are_declared(project):
    files = sorted((REPO / "defocus_cli").rglob("*.py")) + [REPO / s for s in README_SCRIPTS]
    missing = _undeclared(_third_party(files), _requirement_names(project["dependencies"]))
    assert not missing, "imported but not in [project] dependencies: " + "; ".join(missing)


def test_test_imports_are_declared(project):
    declared = _requirement_names(project["dependencies"] + project["optional-dependencies"]["test"])
    files = sorted((REPO / "tests").rglob("*.py"))
    missing = _undeclared(_third_party(files), declared)
    assert not missing, "tests import modules no requirement provides: " + "; ".join(missing)


def test_the_check_catches_an_undeclared_module(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import click\nfrom numpy import zeros\nimport json\n")
    assert _imports(f) == {"click", "numpy", "json"}
    found = {m: ["m.py"] for m in _imports(f) if m not in sys.stdlib_module_names}
    missing = _undeclared(found, _requirement_names(["numpy>=1.24", "typer>=0.12"]))
    assert len(missing) == 1 and missing[0].startswith("click")


def test_torch_is_a_range_and_pinned_only_in_the_constraints(project):
    torch_req = next(r for r in project["dependencies"] if _canonical(r).startswith("torch"))
    assert "==" not in torch_req, f"pyproject pins {torch_req!r}: a user with a CUDA torch would lose it"
    constraints = (REPO / "constraints.txt").read_text()
    assert re.search(r"^torch==\d", constraints, re.M), "constraints.txt must pin this machine's torch"
    assert "torchvision" not in " ".join(project["dependencies"])


def test_opencv_build_is_used_where_declared(project):
    """The contrib build is declared only while the package uses cv2.ximgproc."""
    contrib = any(_canonical(r).startswith("opencv-contrib") for r in project["dependencies"])
    uses_ximgproc = any("ximgproc" in f.read_text() for f in (REPO / "defocus_cli").rglob("*.py"))
    assert contrib == uses_ximgproc


def test_every_subpackage_is_installed():
    """pyproject lists packages explicitly: a new subpackage left out works editable and breaks `pip install .`."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "defocus_cli").rglob("__init__.py")}
    assert found - listed == set(), f"not in [tool.setuptools] packages: {sorted(found - listed)}"
