rule plot_figures:
    """First figures: loss curves per depth and learning times against width."""
    input:
        study=upstream(rules.combine_study.output.study),
        code=code("figures"),
    output:
        figures=expand(f"{FIGURES}/{{name}}.{{ext}}", name=FIGURE_NAMES, ext=config["figures"]["formats"]),
    log:
        f"{LOGS}/plot_figures.log",
    benchmark:
        f"{BENCHMARKS}/plot_figures.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        figures=config["figures"],
    script:
        "../scripts/plot_figures.py"
