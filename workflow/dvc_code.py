"""Write the library deps of each dvc.yaml stage: the bachglass modules its scripts import.

The one list of a step's code is :func:`bachglass.io.code_modules` of its script; Snakemake's rules take
their ``code`` inputs from it, and this writes the same modules into the ``src/bachglass/*.py`` deps of every
stage, after the stage's ``workflow/scripts/*.py`` deps, keeping the rest of dvc.yaml (comments included) as
it is. ``tests/test_workflow.py`` checks the result against Snakemake's DAG.

    python workflow/dvc_code.py           # rewrite dvc.yaml
    python workflow/dvc_code.py --check   # exit 1 and name the stages when dvc.yaml is out of date
"""

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bachglass.io import code_modules  # noqa: E402

SCRIPT = re.compile(r"\s+- (workflow/scripts/\S+\.py)$")
STAGE = re.compile(r"  (\w+):(\s+#.*)?$")
MODULE = "- src/bachglass/"


def synced(text: str) -> tuple[str, list[str]]:
    """Return dvc.yaml's text with each stage's module deps rewritten, and the stages that changed."""
    lines, out, changed = text.splitlines(keepends=True), [], []
    scripts: list[str] = []
    stage = ""
    k = 0
    while k < len(lines):
        line = lines[k]
        if match := STAGE.match(line.rstrip("\n")):
            stage, scripts = match.group(1), []
        if match := SCRIPT.match(line.rstrip("\n")):
            scripts.append(match.group(1))
        if line.strip().startswith(MODULE):
            indent = line[: len(line) - len(line.lstrip())]
            old = []
            while k < len(lines) and lines[k].strip().startswith(MODULE):
                old.append(lines[k])
                k += 1
            modules = sorted(set().union(*(code_modules(ROOT / s) for s in scripts)))
            new = [f"{indent}{MODULE}{name}.py\n" for name in modules]
            if new != old:
                changed.append(stage)
            out += new
            continue
        out.append(line)
        k += 1
    return "".join(out), changed


def main() -> int:
    """Rewrite dvc.yaml, or with --check only report the stages whose module deps are out of date."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report, do not write")
    args = parser.parse_args()
    path = ROOT / "dvc.yaml"
    text, changed = synced(path.read_text())
    if args.check:
        if changed:
            stages = ", ".join(changed)
            print(f"dvc.yaml: the code deps of {stages} are out of date; run python workflow/dvc_code.py")
        return 1 if changed else 0
    if changed:
        path.write_text(text)
        print(f"dvc.yaml: rewrote the code deps of {', '.join(changed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
