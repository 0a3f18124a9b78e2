# A training job trains one seed pack of one (depth, width) as one batched model (bachglass.ensemble)
# and writes its runs into one file along seed. The grid, the aging subset and the Langevin sweep
# train by the same rule with their own params; profiles give each rule its resources by name.


rule train_pack:
    """One seed pack of one (depth, width) of the grid, trained by SGD as one batched model."""
    input:
        encoded=upstream(rules.publish_data.output.encoded),
        code=code("train_pack.py"),
    output:
        trajectory=f"{RUN}/trajectory.nc",
    log:
        f"{LOGS}/train_pack/{RUN_ID}.log",
    benchmark:
        f"{BENCHMARKS}/train_pack/{RUN_ID}.tsv"
    threads: 1
    params:
        train=config["train"],
    script:
        "../scripts/train_pack.py"


use rule train_pack as train_aging_pack with:
    output:
        trajectory=f"{AGING_RUN}/trajectory.nc",
    log:
        f"{LOGS}/train_aging_pack/{RUN_ID}.log",
    benchmark:
        f"{BENCHMARKS}/train_aging_pack/{RUN_ID}.tsv"
    params:
        train=aging_params()["train"],


use rule train_pack as train_langevin_pack with:
    output:
        trajectory=f"{LANGEVIN_RUN}/trajectory.nc",
    log:
        f"{LOGS}/train_langevin_pack/T{{temperature}}/{RUN_ID}.log",
    benchmark:
        f"{BENCHMARKS}/train_langevin_pack/T{{temperature}}/{RUN_ID}.tsv"
    params:
        train=langevin_train,
