"""The checkout's folders import as one package, bgjobs, without links made by hand.

pyproject.toml maps bgjobs.core to core/ (and so on); `make links` has setuptools lay the
package out as a tree of links (strict editable mode), which the venv, mypy and pyright read.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
PACKAGE_DIRS = SETUPTOOLS["package-dir"]


def folder_of(package: str) -> Path:
    """The checkout's folder of a package, from the longest mapped prefix of its name."""
    top = max((p for p in PACKAGE_DIRS if package == p or package.startswith(p + ".")), key=len)
    return ROOT / PACKAGE_DIRS[top] / package[len(top):].lstrip(".").replace(".", "/")


def test_every_package_resolves_to_this_checkouts_folder() -> None:
    assert PACKAGE_DIRS["bgjobs.core"] == "core"
    for package, folder in PACKAGE_DIRS.items():
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.origin is not None, package
        assert Path(spec.origin).resolve() == ROOT / folder / "__init__.py", package


def test_every_module_of_the_checkout_imports_from_its_file() -> None:
    """A module added since the tree was made is missing from it: `make links` adds it."""
    stale = []
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            spec = importlib.util.find_spec(name)
            if spec is None or spec.origin is None or Path(spec.origin).resolve() != path:
                stale.append(name)
    assert not stale, f"run `make links`: the package's link tree lacks {', '.join(stale)}"


def test_every_data_file_of_the_checkout_is_in_the_package() -> None:
    """The SQL and the dashboard's assets are read as package data: a new file needs a relink."""
    stale = []
    for package, patterns in SETUPTOOLS["package-data"].items():
        shipped = {p.name for p in importlib.resources.files(package).iterdir()}
        for pattern in patterns:
            stale += [f"{package}/{path.name}" for path in folder_of(package).glob(pattern)
                      if path.is_file() and path.name not in shipped]
    assert not stale, f"run `make links`: the package's link tree lacks {', '.join(stale)}"


def test_python_c_in_the_checkout_imports_the_whole_package() -> None:
    # `python -c` puts the working folder first on sys.path, where bgjobs/ holds only the top.
    done = subprocess.run(
        [sys.executable, "-c", "import bgjobs.core, bgjobs.worker.duties, bgjobs.server.api; "
         "print(bgjobs.core.__file__); print(bgjobs.worker.duties.__file__)"],
        cwd=ROOT, capture_output=True, text=True, check=True)
    assert [Path(line).resolve() for line in done.stdout.splitlines()] == [
        ROOT / "core" / "__init__.py", ROOT / "worker" / "duties" / "__init__.py"]
