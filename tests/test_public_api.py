"""The public API: small, sorted, documented; and the README and CI agree."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import micromessaging

ROOT = Path(__file__).resolve().parent.parent


def test_all_is_sorted_and_complete() -> None:
    assert micromessaging.__all__ == sorted(micromessaging.__all__)
    public = {name for name in vars(micromessaging) if not name.startswith("_")}
    modules = {"transports", "examples", "bench", "cli", "console", "gateway", "observability"}
    public -= modules
    assert public <= set(micromessaging.__all__) | {"annotations"}


def test_every_public_name_is_documented() -> None:
    for name in micromessaging.__all__:
        value = getattr(micromessaging, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), name
            for attr, member in vars(value).items() if inspect.isclass(value) else ():
                if not attr.startswith("_") and (
                    inspect.isfunction(member) or isinstance(member, property)
                ):
                    assert inspect.getdoc(member), f"{name}.{attr}"


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^\$ (.+)$", readme, flags=re.MULTILINE)
    test_command = next(c for c in commands if "pytest" in c)
    install, _, run = test_command.partition(" && ")
    assert "pip install" in install and '".[dev]"' in install
    assert ci.rstrip().splitlines()[-1] == run
