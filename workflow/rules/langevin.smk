# The Langevin sweep: full-batch gradient descent plus noise at each temperature T of params.yaml's
# langevin section (one folder per T), for the time-temperature superposition of the overlap Q.
# Its training rule is train.smk's train_langevin_pack; the steps after it are the grid's.


use rule extract_observables as extract_langevin_observables with:
    input:
        trajectory=upstream(f"{LANGEVIN_RUN}/trajectory.nc"),
        encoded=upstream(rules.publish_data.output.encoded),
        code=code("extract_observables.py"),
    output:
        observables=f"{LANGEVIN_RUN}/observables.nc",
    log:
        f"{LOGS}/extract_langevin_observables/T{{temperature}}/{RUN_ID}.log",
    benchmark:
        f"{BENCHMARKS}/extract_langevin_observables/T{{temperature}}/{RUN_ID}.tsv"
    params:
        observables=langevin_params()["observables"],
        probes=config["probes"],


rule combine_langevin:
    """All Langevin runs' observables in one dataset along (temperature, depth, width, seed)."""
    input:
        observables=upstream(langevin_runs("observables.nc")),
        code=code("combine_langevin.py"),
    output:
        study="results/langevin.nc",
    log:
        f"{LOGS}/combine_langevin.log",
    benchmark:
        f"{BENCHMARKS}/combine_langevin.tsv"
    params:
        grid=langevin_params()["grid"],
    script:
        "../scripts/combine_langevin.py"
