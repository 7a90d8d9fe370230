# Data stages: fetch the NWB files, bin and split them, and build the evaluation targets.


localrules:
    fetch,


rule fetch:
    input:
        local_source_files(),
    output:
        marker=FETCH_MARKER,
        files=fetched_files(),
    log:
        f"{LOGS}/fetch.log",
    benchmark:
        f"{BENCHMARKS}/fetch.tsv"
    conda:
        "../../envs/lfads.yaml"
    params:
        source=SOURCE,
        data_dir=lambda wildcards, output: Path(output.marker).parent,
    script:
        "../scripts/fetch.py"


rule prepare:
    input:
        marker=FETCH_MARKER,
        train=NWB["train"],
        test=NWB["test"],
        truth=list(TRUTH.values()),
    output:
        f"{RESULTS}/prepared_{{bin}}ms.h5",
    log:
        f"{LOGS}/prepare_{{bin}}ms.log",
    benchmark:
        f"{BENCHMARKS}/prepare_{{bin}}ms.tsv"
    conda:
        "../../envs/lfads.yaml"
    params:
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
        marker=FETCH_MARKER,
        train=NWB["train"],
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
        layout=LAYOUT,
    script:
        "../scripts/targets.py"
