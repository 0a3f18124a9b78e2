"""bachglass: deep RNNs learn Bach chorales; glassy dynamics near the interpolation transition.

Run the default study with `snakemake --cores all`; `dvc repro` runs the same rules stage by stage.
"""

from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/observables.smk"
include: "workflow/rules/analysis.smk"


rule all:
    """The combined study and its figures."""
    default_target: True
    input:
        rules.combine_study.output.study,
        expand(f"{FIGURES}/{{name}}.{{ext}}", name=FIGURE_NAMES, ext=config["figures"]["formats"]),
