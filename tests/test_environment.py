"""The locked environment: what `make` installs, and the checks it makes before installing anything."""

import re
import subprocess
import sys
import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from workflow_helpers import ROOT

LOCKS = {"cpu": ROOT / "envs" / "cpu.txt", "cuda": ROOT / "envs" / "cuda.txt"}
# what only the CUDA build of torch pulls in
CUDA_ONLY = re.compile(r"nvidia-.*|cuda-.*|triton")


def pins(lock: str) -> dict[str, str]:
    """The lock's exact versions by canonical name."""
    found = {}
    for line in LOCKS[lock].read_text().splitlines():
        if line and not line.startswith((" ", "#", "-")):
            name, version = line.split("==")
            found[canonicalize_name(name)] = version
    return found


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


@pytest.mark.parametrize("lock", LOCKS)
def test_each_lock_pins_every_requirement_within_its_bounds(lock):
    locked = pins(lock)
    for req in project_requirements():
        name = canonicalize_name(req.name)
        assert name in locked, f"envs/{lock}.txt lacks {req.name}: run make lock"
        within = req.specifier.contains(locked[name], prereleases=True)
        assert within, f"{lock}: {name}=={locked[name]} vs {req}"


def test_the_locks_differ_only_in_the_torch_build():
    cpu, cuda = pins("cpu"), pins("cuda")
    assert cpu["torch"].endswith("+cpu") and cuda["torch"] == cpu["torch"].removesuffix("+cpu")
    assert {n for n in cuda.keys() - cpu.keys() if not CUDA_ONLY.fullmatch(n)} == set()
    assert cpu.keys() <= cuda.keys()
    assert {n: (v, cuda[n]) for n, v in cpu.items() if n != "torch" and v != cuda[n]} == {}


def test_the_venv_running_these_tests_holds_the_cpu_lock():
    """What `make` installed is the lock: a stale venv fails here rather than computing other bytes."""
    stamp = ROOT / sys.prefix / ".installed"  # the lock `make` installed, where make made this venv
    lock = "cuda" if stamp.exists() and "cuda" in stamp.read_text() else "cpu"
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    differ = {n: (v, installed.get(n)) for n, v in pins(lock).items() if installed.get(n) != v}
    assert differ == {}, "the venv is not the lock's (make clean-venv && make test): " + str(differ)


def fake_python(tmp_path, version: str, ensurepip: bool = True):
    """A stand-in interpreter that answers the Makefile's three questions as ``version`` would."""
    path = tmp_path / "python"
    old = "1" if tuple(map(int, version.split("."))) < (3, 11) else "0"
    path.write_text(
        "#!/bin/sh\n"
        'case "$2" in\n'
        f"  *version_info*) exit {old};;\n"
        f"  *platform*) echo {version};;\n"
        f"  *ensurepip*) exit {0 if ensurepip else 1};;\n"
        "esac\n"
    )
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(
    ("version", "ensurepip", "error"),
    [
        ("3.10.12", True, "is Python 3.10.12; bachglass needs >= 3.11"),
        (
            "3.11.2",
            False,
            "cannot create a venv (no ensurepip); on Debian/Ubuntu: apt-get install python3-venv",
        ),
        (None, True, "not found; bachglass needs Python >= 3.11"),
    ],
)
def test_make_refuses_an_unusable_python_in_one_line_before_installing(tmp_path, version, ensurepip, error):
    python = fake_python(tmp_path, version, ensurepip) if version else tmp_path / "no-such-python"
    venv = tmp_path / "venv"
    proc = subprocess.run(
        ["make", "-s", "venv", f"PYTHON={python}", f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode != 0
    first = proc.stderr.splitlines()[0]
    assert first.startswith(f"make: {python} ") and error in first, proc.stderr
    assert not venv.exists()


def test_make_accepts_the_python_running_the_tests():
    cmd = ["make", "-s", "check-python", f"PYTHON={sys.executable}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
