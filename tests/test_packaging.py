"""pyproject.toml declares what the code imports, and nothing it doesn't."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirement_names(requirements: list[str]) -> set[str]:
    names = {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0] for r in requirements}
    return {name.lower().replace("_", "-") for name in names if name != "micromessaging"}


def imported_top_level_modules() -> set[str]:
    modules = set()
    for path in (ROOT / "src" / "micromessaging").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.partition(".")[0])
    return modules - set(sys.stdlib_module_names) - {"micromessaging"}


def test_every_imported_package_is_declared() -> None:
    declared = requirement_names(PROJECT["dependencies"])
    for extra, requirements in PROJECT["optional-dependencies"].items():
        if extra != "dev":
            declared |= requirement_names(requirements)
    distributions = packages_distributions()
    undeclared = set()
    for module in imported_top_level_modules():
        # A namespace package (opentelemetry) comes from several distributions: one will do.
        providers = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not providers & declared:
            undeclared.add(module)
    assert undeclared == set()


def test_core_dependencies_are_only_what_every_command_needs() -> None:
    assert requirement_names(PROJECT["dependencies"]) == {"orjson", "click"}


def test_no_unused_extras_of_uvicorn() -> None:
    http = PROJECT["optional-dependencies"]["http"]
    assert not any(r.startswith("uvicorn[") for r in http)


def test_a_license_file_ships() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "2026 micromessaging team" in text
    assert PROJECT["license"] == "MIT"


def test_the_wheel_ships_the_console_page(tmp_path) -> None:
    from zipfile import ZipFile

    from hatchling.builders.wheel import WheelBuilder

    from micromessaging.console.app import FILES

    [wheel] = WheelBuilder(str(ROOT)).build(directory=str(tmp_path), versions=["standard"])
    names = set(ZipFile(wheel).namelist())
    assert {f"micromessaging/console/static/{name}" for name in FILES} <= names
