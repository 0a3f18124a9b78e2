rule extract_observables:
    """Learning times, two-time observables, accuracy and sharpness of the runs of one seed pack."""
    input:
        trajectory=upstream(f"{RUN}/trajectory.nc"),
        encoded=upstream(rules.publish_data.output.encoded),
        code=code("extract_observables.py"),
    output:
        observables=f"{RUN}/observables.nc",
    log:
        f"{LOGS}/extract_observables/{RUN_ID}.log",
    benchmark:
        f"{BENCHMARKS}/extract_observables/{RUN_ID}.tsv"
    threads: 1
    params:
        observables=config["observables"],
        probes=config["probes"],
    script:
        "../scripts/extract_observables.py"


rule combine_study:
    """All runs' observables in one labelled dataset along (depth, width, seed)."""
    input:
        observables=upstream(all_runs("observables.nc")),
        code=code("combine_study.py"),
    output:
        study="results/study.nc",
    log:
        f"{LOGS}/combine_study.log",
    benchmark:
        f"{BENCHMARKS}/combine_study.tsv"
    params:
        grid=config["grid"],
    script:
        "../scripts/combine_study.py"
