# Each data step writes a staging copy (temp) that a publish_* rule then moves into place. Snakemake
# deletes a job's outputs before it runs it: were get_chorales to write chorales.json itself, a bad score
# or download would take the current chorales.json with it, and putting the params back would re-run the
# whole study. A failing step leaves the published files, and Snakemake's records of them, as they were
# (tests/test_faults.py).


rule get_chorales:
    """Acquire the chorales (music21 corpus, a checksummed download, or the user's scores) and a manifest."""
    input:
        scores=score_files,
        code=code("chorales"),
    output:
        chorales=temp(staging("data", "chorales.json")),
        manifest=temp(staging("data", "manifest.tsv")),
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
        download_dir=f"{DATA}/chorales",  # a download stays there: checked, not fetched, next time
    script:
        "../scripts/get_chorales.py"


rule publish_chorales:
    """Move the acquired chorales into place, once get_chorales has succeeded."""
    input:
        staged=rules.get_chorales.output,
        scores=score_files,
        code=code("chorales"),
    output:
        chorales=f"{DATA}/chorales/chorales.json",
        manifest=f"{DATA}/chorales/manifest.tsv",
    log:
        f"{LOGS}/publish_chorales.log",
    localrule: True
    conda:
        "../../envs/data.yaml"
    params:
        data=config["data"],  # the params trigger lives here, on the files that stay
    script:
        "../scripts/publish.py"


rule encode_chorales:
    """Quantise, transpose, split and tokenise the chorales; compute the memoriser loss floor."""
    input:
        chorales=upstream(rules.publish_chorales.output.chorales),
        code=code("encoding"),
    output:
        encoded=temp(staging("encoding", "encoded.nc")),
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


rule publish_encoded:
    """Move the encoded chorales into place, once encode_chorales has succeeded."""
    input:
        staged=rules.encode_chorales.output,
        chorales=upstream(rules.publish_chorales.output.chorales),
        code=code("encoding"),
    output:
        encoded=f"{DATA}/encoded.nc",
    log:
        f"{LOGS}/publish_encoded.log",
    localrule: True
    conda:
        "../../envs/data.yaml"
    params:
        encoding=config["encoding"],
    script:
        "../scripts/publish.py"
