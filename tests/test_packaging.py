"""environment.yml and pyproject.toml must name the same packages."""
from __future__ import annotations

import re
import tomllib

import yaml

from conftest import ROOT


def _name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [s for group in project["optional-dependencies"].values() for s in group]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_specs = [s for s in pip if not s.startswith("-e")]
    assert {_name(s) for s in conda_specs} == {_name(s) for s in specs}
    constraints = (ROOT / "constraints.txt").read_text()
    assert "torch==2.13.0" in constraints and "torch==2.13.0" in pip
