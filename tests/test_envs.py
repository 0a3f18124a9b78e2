"""The conda environments for cluster users list the same packages and bounds as pyproject.toml."""

import re
import tomllib

import yaml
from workflow_helpers import ROOT

CONDA_NAME = {"pytorch": "torch"}  # conda-forge name -> PyPI name
WORKFLOW_ONLY = {"snakemake", "dvc", "jsonschema", "pyyaml"}  # run by the driver, not in jobs


def requirement(spec: str) -> tuple[str, str]:
    name, bound = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", spec).groups()
    name = name.lower()
    return CONDA_NAME.get(name, name), bound.replace(" ", "")


def pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return dict(requirement(spec) for spec in project["dependencies"])


def env_requirements() -> dict[str, dict[str, str]]:
    envs = {}
    for path in sorted((ROOT / "envs").glob("*.yaml")):
        deps = yaml.safe_load(path.read_text())["dependencies"]
        envs[path.stem] = dict(requirement(d) for d in deps if isinstance(d, str))
    return envs


def test_every_env_package_is_a_project_dependency_with_the_same_bound():
    project = pyproject_requirements()
    for env, deps in env_requirements().items():
        for name, bound in deps.items():
            if name == "python":
                continue
            assert name in project, f"envs/{env}.yaml: {name} is not in pyproject.toml"
            assert bound == project[name], f"envs/{env}.yaml: {name}{bound} vs {project[name]}"


def test_every_project_dependency_is_in_some_env():
    in_envs = {name for deps in env_requirements().values() for name in deps}
    missing = set(pyproject_requirements()) - in_envs - WORKFLOW_ONLY
    assert not missing, f"in pyproject.toml but in no envs/*.yaml: {missing}"


def test_every_rule_names_an_existing_env():
    for smk in (ROOT / "workflow/rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*"\.\./\.\./(envs/[\w.]+)"', smk.read_text()):
            assert (ROOT / env).is_file(), f"{smk.name}: {env} missing"
