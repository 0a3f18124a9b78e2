"""bachglass: deep RNNs learn Bach chorales; glassy dynamics near the interpolation transition.

Run the default study with `snakemake --cores all`; `dvc repro` runs the same rules stage by stage.
"""

from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/observables.smk"
include: "workflow/rules/aging.smk"
include: "workflow/rules/langevin.smk"
include: "workflow/rules/stability.smk"
include: "workflow/rules/sgd_floor.smk"
include: "workflow/rules/analysis.smk"


rule all:
    """The study, its fits and metrics, the science checks and the figures."""
    default_target: True
    input:
        rules.combine_study.output.study,
        rules.fit_study.output,
        rules.check_science.output.table,
        rules.plot_figures.output.figures,
        rules.propose_widths.output.proposals,
