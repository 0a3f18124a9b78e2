"""The conda environments for cluster users list the same packages and bounds as pyproject.toml."""

import ast
import re
import sys
import tomllib
from pathlib import Path

import yaml
from workflow_helpers import ROOT

from bachglass import io

CONDA_NAME = {"pytorch": "torch"}  # conda-forge name -> PyPI name
WORKFLOW_ONLY = {  # run by the driver (and, for the SLURM plugins, its nested snakemake), not in jobs' envs
    "snakemake",
    "snakemake-executor-plugin-slurm",
    "snakemake-executor-plugin-slurm-jobstep",
    "dvc",
    "dvc-ssh",
    "jsonschema",
    "pyyaml",
}


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


IMPORT_TO_PACKAGE = {"yaml": "pyyaml", "netCDF4": "netcdf4"}


def module_imports(path: Path) -> tuple[set[str], set[str]]:
    """Top-level imports of a file (those inside functions are lazy): (third-party, bachglass modules)."""
    third, ours = set(), set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` imports never run
            continue
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            top = name.split(".")[0]
            if top == "bachglass":
                ours.add(name.split(".")[1])
            elif top not in sys.stdlib_module_names:
                third.add(IMPORT_TO_PACKAGE.get(top, top))
    return third, ours


def packages_needed(script: Path) -> set[str]:
    """Third-party packages a workflow script needs, through the bachglass modules it runs."""
    needed = module_imports(script)[0]
    for module in io.code_modules(script):
        needed |= module_imports(ROOT / f"src/bachglass/{module}.py")[0]
    return needed | {"netcdf4"}  # io writes with the netcdf4 engine, which xarray imports lazily


def rule_envs_and_scripts() -> list[tuple[str, str, str]]:
    rules = []
    for smk in sorted((ROOT / "workflow/rules").glob("*.smk")):
        for block in re.split(r"^rule\b *", smk.read_text(), flags=re.M)[1:]:
            env = re.search(r'conda:\s*"\.\./\.\./envs/([\w]+)\.yaml"', block)
            script = re.search(r'script:\s*"\.\./scripts/([\w]+\.py)"', block)
            rules.append((block.split(":")[0], env.group(1), script.group(1)))
    return rules


def test_each_rule_env_holds_every_package_its_script_imports():
    envs = env_requirements()
    rules = rule_envs_and_scripts()
    scripts = {path.name for path in (ROOT / "workflow/scripts").glob("*.py")}
    assert {script for _, _, script in rules} == scripts  # every script has its rule
    for rule, env, script in rules:
        missing = packages_needed(ROOT / "workflow/scripts" / script) - set(envs[env])
        assert not missing, f"rule {rule}: envs/{env}.yaml lacks {sorted(missing)}"
