# The SGD floor: the widest nets trained long, unclipped, at several (lr, batch size) (params.yaml
# sgd_floor:), and the restart test of check 7 (the first setting's runs continued at lr x factor).
# Of the train section they take only what is not theirs (lr, batch size, steps and clip are); of
# sgd_floor only what decides the training (an edit of the fit window re-trains nothing).

from bachglass.floor_runs import RESTART_KEYS, SETTING_KEYS
from bachglass.floor_runs import OWN_KEYS as FLOOR_OWN_KEYS


rule train_floor:
    """The floor runs of one (lr, batch size): every seed of sgd_floor as one batched model."""
    input:
        encoded=upstream(rules.publish_data.output.encoded),
        code=code("floor_runs.py"),
    output:
        runs=f"{FLOOR}/{FLOOR_ID}.nc",
    log:
        f"{LOGS}/train_floor/{FLOOR_ID}.log",
    benchmark:
        f"{BENCHMARKS}/train_floor/{FLOOR_ID}.tsv"
    threads: 1
    params:
        sgd_floor={key: config["sgd_floor"][key] for key in SETTING_KEYS},
        train={key: value for key, value in config["train"].items() if key not in FLOOR_OWN_KEYS},
    script:
        "../scripts/floor_runs.py"


rule restart_floor:
    """The first floor setting's runs continued from sgd_floor.restart_step at lr x factor."""
    input:
        parent=upstream(floor_parent()),
        encoded=upstream(rules.publish_data.output.encoded),
        code=code("floor_runs.py"),
    output:
        runs=f"{FLOOR}/restart_x{{factor}}.nc",
    log:
        f"{LOGS}/restart_floor/x{{factor}}.log",
    benchmark:
        f"{BENCHMARKS}/restart_floor/x{{factor}}.tsv"
    threads: 1
    params:
        sgd_floor={key: config["sgd_floor"][key] for key in RESTART_KEYS},
        train={key: value for key, value in config["train"].items() if key not in FLOOR_OWN_KEYS},
    script:
        "../scripts/floor_runs.py"
