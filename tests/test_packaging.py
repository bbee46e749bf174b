"""pyproject.toml is the source of truth; environment.yml, .ci/run and README follow it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _env() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def test_environment_installs_the_project_with_every_extra():
    extras = set(_pyproject()["project"]["optional-dependencies"])
    deps = _env()["dependencies"]
    pip_sections = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml needs exactly one pip section"
    lines = pip_sections[0]
    project_lines = [ln for ln in lines if re.match(r"^(-e\s+)?\.(\[.*\])?$", ln)]
    assert len(project_lines) == 1, f"the pip section must install the project itself, got {lines}"
    m = re.search(r"\[(.*)\]", project_lines[0])
    listed = set(m.group(1).split(",")) if m else set()
    assert listed == extras, f"environment.yml extras {sorted(listed)} != pyproject extras {sorted(extras)}"
    # nothing else is pinned in environment.yml: pyproject.toml is the single source
    assert [ln for ln in lines if ln not in project_lines] == []


def test_environment_python_satisfies_requires_python():
    spec = _pyproject()["project"]["requires-python"]
    lo = tuple(int(x) for x in re.match(r">=\s*([\d.]+)", spec).group(1).split("."))
    py = [d for d in _env()["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert len(py) == 1
    ver = tuple(int(x) for x in re.search(r"=\s*([\d.]+)", py[0]).group(1).split("."))
    assert ver >= lo
    assert "pip" in _env()["dependencies"]


def test_ci_runs_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^\s*(make \w[\w-]*)\s*$", ci, flags=re.M)
    assert commands == ["make test"]
    assert re.search(r"^make test\s*$", readme, flags=re.M), "README's quick start must show `make test`"
    assert re.search(r"^make demo\s*$", readme, flags=re.M), "README's quick start must show `make demo`"
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test:", makefile, flags=re.M) and re.search(r"^demo:", makefile, flags=re.M)
