# One training job trains a pack of seeds of one (depth, width) as one batched model (train.pack
# seeds per job, bachglass.ensemble); each run still gets its own trajectory.nc. The rules are made
# per pack of seeds because a job's output files must follow from the requested file's wildcards.
TRAIN_SETS = {  # rule name: (run directory pattern, seeds, train params)
    "train_run": (RUN, config["grid"]["seed"], config["train"]),
    "train_aging_run": (AGING_RUN, config["aging"]["seed"], aging_params()["train"]),
}

for train_rule, (run_pattern, all_seeds, train_params) in TRAIN_SETS.items():
    for seeds in seed_packs(all_seeds, config["train"]["pack"]):
        pack = "_".join(map(str, seeds))

        rule:
            name:
                f"{train_rule}_s{pack}"
            input:
                encoded=upstream(rules.encode_chorales.output.encoded),
                code=code("model", "ensemble", "train"),
            output:
                pack_outputs(run_pattern, seeds),
            log:
                f"{LOGS}/{train_rule}/d{{depth}}_w{{width}}_s{pack}.log",
            benchmark:
                f"{BENCHMARKS}/{train_rule}/d{{depth}}_w{{width}}_s{pack}.tsv"
            conda:
                "../../envs/torch.yaml"
            threads: 1
            resources:
                runs=len(seeds),
            params:
                train=train_params,
                seeds=seeds,
            script:
                "../scripts/train_run.py"
