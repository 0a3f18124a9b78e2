# The stability scan: unclipped constant-eta minibatch SGD over learning rates, batch sizes and inits
# (params.yaml stability:), from which the default study's eta and B are chosen (docs/stability.md).


rule scan_stability:
    """Every (init, lr, seed) of one (depth, width, batch size), unclipped: divergence, unsafe steps, sharpness."""
    input:
        encoded=upstream(rules.publish_data.output.encoded),
        code=code("scan_stability.py"),
    output:
        scan=f"{STABILITY_CELL}.nc",
    log:
        f"{LOGS}/scan_stability/{STABILITY_ID}.log",
    benchmark:
        f"{BENCHMARKS}/scan_stability/{STABILITY_ID}.tsv"
    threads: 1
    params:
        stability=config["stability"],
        train={key: config["train"][key] for key in ("cell", "dtype", "device")},
    script:
        "../scripts/scan_stability.py"


rule combine_stability:
    """The scan's cells in one dataset, and its table (a row per depth, width, batch size, init and lr)."""
    input:
        scans=upstream(stability_cells()),
        code=code("combine_stability.py"),
    output:
        scan="results/stability.nc",
        table="results/stability.md",
    log:
        f"{LOGS}/combine_stability.log",
    benchmark:
        f"{BENCHMARKS}/combine_stability.tsv"
    params:
        grid={key: config["stability"][key] for key in ("depth", "width", "batch_size")},
    script:
        "../scripts/combine_stability.py"
