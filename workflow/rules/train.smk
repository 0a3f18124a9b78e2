rule train_run:
    """Train one (depth, width, seed) network; resume from its checkpoint if one exists."""
    input:
        encoded=upstream(rules.encode_chorales.output.encoded),
        code=code("model", "elman", "train"),
    output:
        trajectory=f"{RUN}/trajectory.nc",
    log:
        f"{LOGS}/train_run/{RUN_ID}.log",
    benchmark:
        f"{BENCHMARKS}/train_run/{RUN_ID}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 1
    params:
        train=config["train"],
    script:
        "../scripts/train_run.py"
