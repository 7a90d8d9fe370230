# Scoring with nlb_tools, the table of all runs, figures, and the EvalAI submission.


localrules:
    aggregate,
    figures,


rule evaluate:
    input:
        prepared=PREPARED_FOR_MODEL,
        inferred=f"{RUNS_DIR}/{{run}}/inferred.h5",
        targets=TARGETS_FOR_MODEL,
    output:
        f"{RUNS_DIR}/{{run}}/metrics.json",
    log:
        f"{LOGS}/evaluate/{{run}}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{run}}.tsv"
    conda:
        "../../envs/lfads.yaml"
    script:
        "../scripts/evaluate.py"


rule aggregate:
    input:
        metrics=expand(f"{RUNS_DIR}/{{run}}/metrics.json", run=RUNS),
        curves=expand(f"{RUNS_DIR}/{{run}}/metrics.csv", run=RUNS),
    output:
        report(
            f"{RESULTS}/summary.tsv",
            caption="../report/summary.rst",
            category="1. Summary",
            labels={"dataset": DATASET, "table": "all runs"},
        ),
    log:
        f"{LOGS}/aggregate.log",
    benchmark:
        f"{BENCHMARKS}/aggregate.tsv"
    conda:
        "../../envs/lfads.yaml"
    params:
        runs=RUNS,
        run_dir=lambda wildcards, input: Path(input.metrics[0]).parent.parent,
    script:
        "../scripts/aggregate.py"


rule figures:
    input:
        summary=f"{RESULTS}/summary.tsv",
        prepared=PREPARED_FOR_MODEL,
        targets=TARGETS_FOR_MODEL,
        inferred=expand(f"{RUNS_DIR}/{{run}}/inferred.h5", run=RUNS),
    output:
        **{
            figure.name: report(
                figure_path(figure),
                caption=f"../report/{figure.caption}",
                category=f"2. Figures: {DATASET}",
                labels={"dataset": DATASET, "figure": figure.name.replace("_", " ")},
            )
            for figure in FIGURES
        },
    log:
        f"{LOGS}/figures.log",
    benchmark:
        f"{BENCHMARKS}/figures.tsv"
    conda:
        "../../envs/lfads.yaml"
    params:
        runs=RUNS,
        run_dir=lambda wildcards, input: Path(input.inferred[0]).parent.parent,
        group=NLB_GROUP,
    script:
        "../scripts/figures.py"


rule submission:
    input:
        summary=f"{RESULTS}/summary.tsv",
        prepared=PREPARED_FOR_MODEL,
        inferred=expand(f"{RUNS_DIR}/{{run}}/inferred.h5", run=RUNS),
    output:
        f"{RESULTS}/submission_{DATASET}.h5",
    log:
        f"{LOGS}/submission.log",
    benchmark:
        f"{BENCHMARKS}/submission.tsv"
    conda:
        "../../envs/lfads.yaml"
    params:
        run_dir=lambda wildcards, input: Path(input.inferred[0]).parent.parent,
    script:
        "../scripts/submission.py"


rule export_nwb:
    input:
        fetch_markers("train", "test"),
        prepared=PREPARED_FOR_MODEL,
        inferred=f"{RUNS_DIR}/{{run}}/inferred.h5",
    output:
        f"{RUNS_DIR}/{{run}}/rates.nwb",
    log:
        f"{LOGS}/export_nwb/{{run}}.log",
    benchmark:
        f"{BENCHMARKS}/export_nwb/{{run}}.tsv"
    conda:
        "../../envs/lfads.yaml"
    params:
        nwb=NWB,
    script:
        "../scripts/export_nwb.py"


# The best run's NWB file under a fixed name (a copy: a link would break when results/ moves).
rule best_nwb:
    input:
        summary=f"{RESULTS}/summary.tsv",
        nwb=expand(f"{RUNS_DIR}/{{run}}/rates.nwb", run=RUNS),
    output:
        f"{RESULTS}/best_rates.nwb",
    log:
        f"{LOGS}/best_nwb.log",
    conda:
        "../../envs/lfads.yaml"
    params:
        run_dir=lambda wildcards, input: Path(input.nwb[0]).parent.parent,
    script:
        "../scripts/best_nwb.py"
