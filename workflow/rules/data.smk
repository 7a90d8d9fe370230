# Data stages: fetch the NWB files, bin and split them, and build the evaluation targets.
# fetch: one job per asset; its output is the asset's marker (path, bytes, SHA-256), and the NWB
# files are outputs of no rule, so Snakemake never deletes a verified download. The later rules
# depend on the markers and read the files' paths from params.


localrules:
    fetch,


rule fetch:
    input:
        local_source_file,
    output:
        f"{DATA_DIR}/fetched/{{asset}}.json",
    log:
        f"{LOGS}/fetch_{{asset}}.log",
    benchmark:
        f"{BENCHMARKS}/fetch_{{asset}}.tsv"
    conda:
        "../../envs/lfads.yaml"
    params:
        source=fetch_params,
        data_dir=Path(DATA_DIR),
    script:
        "../scripts/fetch.py"


rule prepare:
    input:
        fetch_markers("train", "test"),
    output:
        f"{RESULTS}/prepared_{{bin}}ms.h5",
    log:
        f"{LOGS}/prepare_{{bin}}ms.log",
    benchmark:
        f"{BENCHMARKS}/prepare_{{bin}}ms.tsv"
    conda:
        "../../envs/lfads.yaml"
    params:
        train=NWB["train"],
        test=NWB["test"],
        dataset=DATASET,
        layout=LAYOUT,
        phase=PHASE,
        valid_fraction=config["prepare"]["valid_fraction"],
        split_seed=config["prepare"]["split_seed"],
        truth=TRUTH or None,
    script:
        "../scripts/prepare.py"


rule targets:
    input:
        fetch_markers("train"),
    output:
        f"{RESULTS}/targets_{{bin}}ms.h5",
    log:
        f"{LOGS}/targets_{{bin}}ms.log",
    benchmark:
        f"{BENCHMARKS}/targets_{{bin}}ms.tsv"
    conda:
        "../../envs/lfads.yaml"
    resources:
        mem_mb=config["targets"]["mem_mb"],
    params:
        train=NWB["train"],
        layout=LAYOUT,
    script:
        "../scripts/targets.py"
