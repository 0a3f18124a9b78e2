# The aging subset: a few (depth, width) trained longer than the grid, because the sub-aging exponent
# of the grid's runs still drifts with tau_w. The same steps as the grid, with their own params.


use rule train_run as train_aging_run with:
    output:
        trajectory=f"{AGING_RUN}/trajectory.nc",
    log:
        f"{LOGS}/train_aging_run/{RUN_ID}.log",
    benchmark:
        f"{BENCHMARKS}/train_aging_run/{RUN_ID}.tsv"
    params:
        train=aging_params()["train"],


use rule extract_observables as extract_aging_observables with:
    input:
        trajectory=upstream(rules.train_aging_run.output.trajectory),
        code=code("observables"),
    output:
        observables=f"{AGING_RUN}/observables.nc",
    log:
        f"{LOGS}/extract_aging_observables/{RUN_ID}.log",
    benchmark:
        f"{BENCHMARKS}/extract_aging_observables/{RUN_ID}.tsv"
    params:
        observables=aging_params()["observables"],


use rule combine_study as combine_aging with:
    input:
        observables=upstream(aging_runs("observables.nc")),
        code=code("observables"),
    output:
        study="results/aging.nc",
    log:
        f"{LOGS}/combine_aging.log",
    benchmark:
        f"{BENCHMARKS}/combine_aging.tsv"
    params:
        grid=aging_params()["grid"],
