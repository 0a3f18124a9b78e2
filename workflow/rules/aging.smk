# The aging subset: a few (depth, width) trained longer than the grid, because the sub-aging exponent
# of the grid's runs still drifts with tau_w. The same steps as the grid, with their own params
# (their training rule is train.smk's train_aging_pack).


use rule extract_observables as extract_aging_observables with:
    input:
        trajectory=upstream(f"{AGING_RUN}/trajectory.nc"),
        encoded=upstream(rules.publish_data.output.encoded),
        code=code("extract_observables.py"),
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
        code=code("combine_study.py"),
    output:
        study="results/aging.nc",
    log:
        f"{LOGS}/combine_aging.log",
    benchmark:
        f"{BENCHMARKS}/combine_aging.tsv"
    params:
        grid=aging_params()["grid"],
