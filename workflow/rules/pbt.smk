# Population-based training (search.pbt; lfads/search/pbt.py, lfads/training/population.py): the
# whole population trains as one pack in one job, which decides between generations itself and
# writes the final population as runs/pbt-<worker>/ for infer, evaluate and aggregate (a
# population larger than search.pack_size: pbt_packs.smk). Included only for a PBT search.
#
# results/<dataset>/<phase>/pbt/      plan_gen<g>.json and results_gen<g>.json of each generation,
#                                      written as the search goes (for reading)
# results/<dataset>/<phase>/checkpoints/pbt/
#                                      the population's state (last.ckpt, after every epoch; it holds
#                                      every plan and result), so a killed job resumes
from lfads.search.pbt import RUN_PREFIX, PBTSettings, missing_search_files, worker_packs

PBT = PBTSettings.from_config(config["search"]["pbt"])
# {pack: its workers}: one pack unless search.pack_size is below the population (pbt_packs.smk)
PBT_PACKS = worker_packs(PBT, config["search"].get("pack_size", PBT.population))
PBT_PACK_OF = {worker: pack for pack, workers in PBT_PACKS.items() for worker in workers}
PBT_DIR = f"{RESULTS}/pbt"
PBT_HISTORY = f"{RESULTS}/pbt_history.tsv"
PBT_CURVES = f"{PBT_DIR}/curves.tsv"
PBT_FIGURE = f"{RESULTS}/figures/pbt.png"
PBT_FIGURE_TITLE = "hyperparameters and loss over epochs"


if len(PBT_PACKS) > 1:

    include: "pbt_packs.smk"

else:
    # The plans and results are for reading, outputs of no rule: say so if one went missing.
    if workflow.is_main_process:
        for path in missing_search_files(PBT_DIR, PBT_HISTORY):
            print(
                f"{path} is missing; `snakemake --forcerun pbt {PBT_HISTORY}` writes the "
                "search's files again from its state, without training",
                file=sys.stderr,
            )

    rule pbt:
        input:
            data=PREPARED_FOR_MODEL,
        output:
            runs=[
                f"{RUNS_DIR}/{RUN_PREFIX}{worker}/{name}"
                for worker in PBT.worker_names
                for name in TRAIN_FILES.values()
            ],
            history=report(
                PBT_HISTORY,
                caption="../report/pbt_history.rst",
                category="3. Population-based training",
                labels={"dataset": DATASET, "table": "every generation and worker (TSV)"},
            ),
            curves=PBT_CURVES,
        log:
            f"{LOGS}/pbt.log",
        benchmark:
            f"{BENCHMARKS}/pbt.tsv"
        conda:
            "../../envs/lfads.yaml"
        threads: config["resources"]["train"]["threads"]
        resources:
            gpu=config["resources"]["train"]["gpu"],
            runtime=config["resources"]["train"]["runtime"],
            mem_mb=config["resources"]["train"]["mem_mb"],
        params:
            settings=config["search"]["pbt"],
            base_hparams=config["model"]["hparams"],
            runs={worker: f"{RUNS_DIR}/{RUN_PREFIX}{worker}" for worker in PBT.worker_names},
            # Outside the outputs, so a killed job resumes from its last epoch (rule train).
            checkpoint_dir=f"{CHECKPOINTS_DIR}/pbt",
        script:
            "../scripts/pbt.py"

    # runs/pbt-<worker>/ come from the search, not from a pack of the grid.
    ruleorder: pbt > run_files


rule pbt_figure:
    input:
        history=PBT_HISTORY,
        curves=PBT_CURVES,
    output:
        report(
            PBT_FIGURE,
            caption="../report/pbt.rst",
            category="3. Population-based training",
            labels={"dataset": DATASET, "figure": PBT_FIGURE_TITLE},
        ),
    log:
        f"{LOGS}/pbt_figure.log",
    conda:
        "../../envs/lfads.yaml"
    script:
        "../scripts/pbt_figure.py"


localrules:
    pbt_figure,
