rule fit_study:
    """Power laws, critical widths w_c(d, eps) and w_c*(d), the aging collapse (with CIs), phases, τ_e(T)."""
    input:
        study=upstream(rules.combine_study.output.study),
        encoded=upstream(rules.publish_data.output.encoded),
        aging=upstream(aging_study()),
        floor=upstream(floor_files()),
        restarts=upstream(restart_files()),
        langevin=upstream(langevin_study()),
        code=code("fit_study.py"),
    output:
        fits="results/fits.nc",
        metrics="metrics.json",
    log:
        f"{LOGS}/fit_study.log",
    benchmark:
        f"{BENCHMARKS}/fit_study.tsv"
    params:
        fits=config["fits"],
        observables=config["observables"],
        phases=config["phases"],
        sgd_floor=config["sgd_floor"],
    script:
        "../scripts/fit_study.py"


rule propose_widths:
    """New widths where the w_c* interval is widest: `python -m bachglass.adaptive --apply` adds them."""
    input:
        fits=upstream(rules.fit_study.output.fits),
        code=code("propose_widths.py"),
    output:
        proposals="results/proposed_widths.yaml",
    log:
        f"{LOGS}/propose_widths.log",
    benchmark:
        f"{BENCHMARKS}/propose_widths.tsv"
    params:
        grid=config["grid"],
        adaptive=config["adaptive"],
    script:
        "../scripts/propose_widths.py"


rule check_science:
    """The paper's qualitative claims (docs/science.md §6, checks 1-7) judged on the fits: PASS or FAIL."""
    input:
        fits=upstream(rules.fit_study.output.fits),
        code=code("check_science.py"),
    output:
        table=report("results/science_checks.md", caption="../report/science_checks.rst", category="Checks"),
    log:
        f"{LOGS}/check_science.log",
    benchmark:
        f"{BENCHMARKS}/check_science.tsv"
    script:
        "../scripts/check_science.py"


rule plot_figures:
    """Every figure of figures.FIGURES (docs/results.md), from the study, its fits and the sweeps."""
    input:
        study=upstream(rules.combine_study.output.study),
        fits=upstream(rules.fit_study.output.fits),
        aging=upstream(aging_study()),
        langevin=upstream(langevin_study()),
        stability=upstream(stability_study()),
        code=code("plot_figures.py"),
    output:
        figures=figure_files(),
    log:
        f"{LOGS}/plot_figures.log",
    benchmark:
        f"{BENCHMARKS}/plot_figures.tsv"
    params:
        figures=config["figures"],
    script:
        "../scripts/plot_figures.py"
