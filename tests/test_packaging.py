"""The set-up files agree with each other: environment.yml lists exactly pyproject.toml's requirements."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11

ROOT = Path(__file__).resolve().parents[1]


def _pip_lines_of_environment_yml() -> list[str]:
    lines, in_pip = [], False
    for raw in (ROOT / "environment.yml").read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if re.match(r"^\s+- pip:\s*$", line):
            in_pip = True
            continue
        if in_pip and re.match(r"^\s{6,}- ", line):
            lines.append(line.strip()[2:].strip())
    return lines


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    pip_lines = _pip_lines_of_environment_yml()
    assert "-e .[dev]" in pip_lines, "environment.yml must install the package itself with its dev extra"
    listed = [line for line in pip_lines if line != "-e .[dev]"]
    assert sorted(listed) == sorted(wanted), (
        "environment.yml's pip list and pyproject.toml's dependencies + dev extra differ:\n"
        f"only in environment.yml: {sorted(set(listed) - set(wanted))}\n"
        f"only in pyproject.toml: {sorted(set(wanted) - set(listed))}")


def test_environment_yml_python_matches_requires_python():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    text = (ROOT / "environment.yml").read_text()
    assert f"python{project['requires-python']}" in text.replace(" ", "")
