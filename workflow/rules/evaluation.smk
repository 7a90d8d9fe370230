# Scoring with nlb_tools, the ensemble of the best runs, the table of all runs, figures, and the
# EvalAI submission.


localrules:
    aggregate,
    figures,
    gallery,


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


if ENSEMBLES:

    localrules:
        ensemble,

    # The ensemble's folder is a run's without a model: its files come from this rule alone.
    ruleorder: ensemble > train
    ruleorder: ensemble > infer

    rule ensemble:
        input:
            prepared=PREPARED_FOR_MODEL,
            inferred=expand(f"{RUNS_DIR}/{{run}}/inferred.h5", run=RUNS),
            curves=expand(f"{RUNS_DIR}/{{run}}/metrics.csv", run=RUNS),
            models=expand(f"{RUNS_DIR}/{{run}}/model.ckpt", run=RUNS),
        output:
            inferred=f"{RUNS_DIR}/{ENSEMBLES[0]}/inferred.h5",
            curves=f"{RUNS_DIR}/{ENSEMBLES[0]}/metrics.csv",
            members=f"{RUNS_DIR}/{ENSEMBLES[0]}/{MEMBERS_TSV}",
        log:
            f"{LOGS}/ensemble.log",
        benchmark:
            f"{BENCHMARKS}/ensemble.tsv"
        conda:
            "../../envs/lfads.yaml"
        params:
            name=ENSEMBLES[0],
            runs=list(RUNS),
            top_k=config["ensemble"]["top_k"],
        script:
            "../scripts/ensemble.py"


rule aggregate:
    input:
        metrics=expand(f"{RUNS_DIR}/{{run}}/metrics.json", run=SUMMARY_ROWS),
        curves=expand(f"{RUNS_DIR}/{{run}}/metrics.csv", run=SUMMARY_ROWS),
        hparams=expand(f"{RUNS_DIR}/{{run}}/hparams.yaml", run=RUNS),
        prepared=PREPARED_FOR_MODEL,
        targets=TARGETS_FOR_MODEL,
    output:
        report(
            f"{RESULTS}/summary.tsv",
            caption="../report/summary.rst",
            category="1. Result",
            labels={"dataset": DATASET, "table": "all runs (TSV)"},
        ),
        html=report(
            f"{RESULTS}/summary.html",
            caption="../report/summary_html.rst",
            category="1. Result",
            labels={"dataset": DATASET, "table": "best run and references"},
        ),
        references=f"{RESULTS}/references.json",
        columns=report(
            f"{RESULTS}/summary_columns.tsv",
            caption="../report/summary_columns.rst",
            category="1. Result",
            labels={"dataset": DATASET, "table": "what each column of the table means (TSV)"},
        ),
    log:
        f"{LOGS}/aggregate.log",
    benchmark:
        f"{BENCHMARKS}/aggregate.tsv"
    conda:
        "../../envs/lfads.yaml"
    params:
        runs=SUMMARY_ROWS,
        trained=list(RUNS),  # the rows with an hparams.yaml
        # a PBT search's runs have no searched values until it ends: from their hparams.yaml
        searched=(
            [searched.name for searched in PBT.hyperparameters]
            if "pbt" in config["search"]
            else None
        ),
    script:
        "../scripts/aggregate.py"


rule figures:
    input:
        summary=f"{RESULTS}/summary.tsv",
        references=f"{RESULTS}/references.json",
        prepared=PREPARED_FOR_MODEL,
        targets=TARGETS_FOR_MODEL,
        inferred=expand(f"{RUNS_DIR}/{{run}}/inferred.h5", run=RUNS),
        curves=expand(f"{RUNS_DIR}/{{run}}/metrics.csv", run=RUNS),
    output:
        **{
            figure.name: report(
                figure_path(figure),
                caption=f"../report/{figure.caption}",
                category=f"2. Figures: {DATASET}",
                labels={"dataset": DATASET, "figure": figure.title},
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
        runs=list(RUNS),
        group=NLB_GROUP,
    script:
        "../scripts/figures.py"


# The landing page's figures: a thumbnail of each with its caption (workflow/report/workflow.rst).
rule gallery:
    input:
        [png for _, _, png in gallery_figures()],
    output:
        f"{RESULTS}/figures.html",
    log:
        f"{LOGS}/gallery.log",
    conda:
        "../../envs/lfads.yaml"
    params:
        figures=gallery_figures(),
    script:
        "../scripts/gallery.py"


rule submission:
    input:
        summary=f"{RESULTS}/summary.tsv",
        prepared=PREPARED_FOR_MODEL,
        inferred=expand(f"{RUNS_DIR}/{{run}}/inferred.h5", run=SUMMARY_ROWS),
        members=expand(f"{RUNS_DIR}/{{run}}/{MEMBERS_TSV}", run=ENSEMBLES),
    output:
        f"{RESULTS}/submission_{DATASET}.h5",
    log:
        f"{LOGS}/submission.log",
    benchmark:
        f"{BENCHMARKS}/submission.tsv"
    conda:
        "../../envs/lfads.yaml"
    params:
        rows=list(SUMMARY_ROWS),
        ensembles=ENSEMBLES,
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
        source=describe_source(SOURCE),
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
        runs=list(RUNS),
    script:
        "../scripts/best_nwb.py"
