rule extract_observables:
    """Learning times and two-time mean-square displacements of one run."""
    input:
        trajectory=upstream(f"{RUN}/trajectory.nc"),
        code=code("observables"),
    output:
        observables=f"{RUN}/observables.nc",
    log:
        f"{LOGS}/extract_observables/{RUN_ID}.log",
    benchmark:
        f"{BENCHMARKS}/extract_observables/{RUN_ID}.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        observables=config["observables"],
    script:
        "../scripts/extract_observables.py"


rule combine_study:
    """All runs' observables in one labelled dataset along (depth, width, seed)."""
    input:
        observables=upstream(all_runs("observables.nc")),
        code=code("observables"),
    output:
        study="results/study.nc",
    log:
        f"{LOGS}/combine_study.log",
    benchmark:
        f"{BENCHMARKS}/combine_study.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        grid=config["grid"],
    script:
        "../scripts/combine_study.py"
