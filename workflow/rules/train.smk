# A training job trains a pack of seeds of one (depth, width) as one batched model (train.pack seeds,
# bachglass.ensemble); each run still gets its own trajectory.nc.
TRAIN_SETS = [  # (rule family, rule name, run directory pattern, seeds, train params)
    ("train_run", "train_run", RUN, config["grid"]["seed"], config["train"]),
    ("train_aging_run", "train_aging_run", AGING_RUN, config["aging"]["seed"], aging_params()["train"]),
    *(  # one family of rules per temperature of the Langevin sweep; profiles name the family
        (
            "train_langevin_run",
            f"train_langevin_run_T{str(temperature).replace('.', 'p').replace('-', 'm').replace('+', '')}",
            LANGEVIN_RUN.replace("{temperature}", str(temperature)),
            config["langevin"]["seed"],
            langevin_params(temperature)["train"],
        )
        for temperature in config["langevin"]["temperature"]
    ),
]

# Both branches define their rules at the same indentation: Snakemake's code trigger compares the
# text of the script directive, so that snakemake after dvc repro (or the reverse) re-runs nothing.
PACKS = [
    (family, train_rule, run_pattern, all_seeds, seeds, train_params)
    for family, train_rule, run_pattern, all_seeds, train_params in TRAIN_SETS
    for seeds in seed_packs(all_seeds, config["train"]["pack"])
]

if not UNDER_DVC:
    # One job per pack, writing every run of it. The rules are made per pack because a job's output
    # files must follow from the wildcards of any one of them.
    for family, train_rule, run_pattern, all_seeds, seeds, train_params in PACKS:
        pack = "_".join(map(str, seeds))
        inherit_profile_settings(family, f"{train_rule}_s{pack}")

        rule:
            name:
                f"{train_rule}_s{pack}"
            input:
                encoded=upstream(rules.publish_data.output.encoded),
                code=code("model", "ensemble", "sgd", "resume", "train"),
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
                job=pack_job(run_pattern, all_seeds, seeds),
            script:
                "../scripts/train_run.py"

else:
    # dvc repro: DVC's train stages are per run; it deletes a stage's output before running it and
    # write-protects the outputs it has committed, so a job may write only its own run. The first
    # job of a pack trains the pack and leaves the other runs' trajectories in a content-addressed
    # cache, from which their jobs take them: a pack is trained once here too.
    for family, train_rule, run_pattern, all_seeds, train_params in TRAIN_SETS:
        inherit_profile_settings(family, train_rule)

        rule:
            name:
                train_rule
            input:
                encoded=upstream(rules.publish_data.output.encoded),
                code=code("model", "ensemble", "sgd", "resume", "train"),
            output:
                f"{run_pattern}/trajectory.nc",
            log:
                f"{LOGS}/{train_rule}/{RUN_ID}.log",
            benchmark:
                f"{BENCHMARKS}/{train_rule}/{RUN_ID}.tsv"
            conda:
                "../../envs/torch.yaml"
            threads: 1
            params:
                train=train_params,
                job=pack_job(run_pattern, all_seeds),
            script:
                "../scripts/train_run.py"
