rule get_chorales:
    """Acquire the chorales (music21 corpus, a checksummed download, or the user's scores) and a manifest."""
    input:
        scores=score_files,
        code=code("chorales"),
    output:
        chorales=f"{DATA}/chorales/chorales.json",
        manifest=f"{DATA}/chorales/manifest.tsv",
    log:
        f"{LOGS}/get_chorales.log",
    benchmark:
        f"{BENCHMARKS}/get_chorales.tsv"
    # On a cluster a download (data.source: url) runs where snakemake runs: compute nodes often have no internet.
    localrule: config["data"]["source"] == "url"
    conda:
        "../../envs/data.yaml"
    params:
        data=config["data"],
    script:
        "../scripts/get_chorales.py"


rule encode_chorales:
    """Quantise, transpose, split and tokenise the chorales; compute the memoriser loss floor."""
    input:
        chorales=upstream(rules.get_chorales.output.chorales),
        code=code("encoding"),
    output:
        encoded=f"{DATA}/encoded.nc",
    log:
        f"{LOGS}/encode_chorales.log",
    benchmark:
        f"{BENCHMARKS}/encode_chorales.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        encoding=config["encoding"],
    script:
        "../scripts/encode_chorales.py"
