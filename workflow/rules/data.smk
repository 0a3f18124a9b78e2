# The data steps write staging copies (temp) that publish_data moves into place only once both have
# succeeded. Snakemake deletes a job's outputs before it runs it: were get_chorales to write chorales.json
# itself, a bad score or download would take the current chorales.json with it, and putting the params
# back would re-run the whole study. A failing step leaves the published files, and Snakemake's records of
# them, as they were (tests/test_faults.py). An encoding edit re-acquires the chorales too (~1 min).


rule get_chorales:
    """Acquire the chorales (music21 corpus, a checksummed download, or the user's scores) and a manifest."""
    input:
        scores=score_files,
        code=code("get_chorales.py"),
    output:
        chorales=temp(staging(["data", "encoding"], "chorales.json")),
        manifest=temp(staging(["data", "encoding"], "manifest.tsv")),
    log:
        f"{LOGS}/get_chorales.log",
    benchmark:
        f"{BENCHMARKS}/get_chorales.tsv"
    # On a cluster a download (data.source: url) runs where snakemake runs: compute nodes often have no internet.
    localrule: config["data"]["source"] == "url"
    params:
        data=config["data"],
        download_dir=f"{DATA}/chorales",  # a download stays there: checked, not fetched, next time
    script:
        "../scripts/get_chorales.py"


rule encode_chorales:
    """Quantise, transpose, split and tokenise the chorales; compute the memoriser loss floor."""
    input:
        chorales=rules.get_chorales.output.chorales,
        code=code("encode_chorales.py"),
    output:
        encoded=temp(staging(["data", "encoding"], "encoded.nc")),
    log:
        f"{LOGS}/encode_chorales.log",
    benchmark:
        f"{BENCHMARKS}/encode_chorales.tsv"
    params:
        encoding=config["encoding"],
    script:
        "../scripts/encode_chorales.py"


rule publish_data:
    """Move the chorales, their manifest and their encoding into place, once all three were made."""
    input:
        staged=[*rules.get_chorales.output, rules.encode_chorales.output.encoded],
        scores=score_files,
        # what decides the staged files, for Snakemake's triggers (their rules' outputs are gone)
        code=code("get_chorales.py", "encode_chorales.py", "publish_data.py"),
        scripts=[f"workflow/scripts/{step}.py" for step in ("get_chorales", "encode_chorales")],
    output:
        chorales=f"{DATA}/chorales/chorales.json",
        manifest=f"{DATA}/chorales/manifest.tsv",
        encoded=f"{DATA}/encoded.nc",
    log:
        f"{LOGS}/publish_data.log",
    localrule: True
    params:
        data=config["data"],
        encoding=config["encoding"],
    script:
        "../scripts/publish_data.py"
