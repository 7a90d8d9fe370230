# Population-based training of a population larger than search.pack_size: each generation is one
# `pbt_pack` job per pack (on SLURM, one array job), and between generations the `pbt_plan`
# checkpoint reads every pack's results and plans the next generation, whose copies may cross
# packs. Included by pbt.smk when the population takes more than one pack.
#
# results/<dataset>/<phase>/pbt/
#   plan_gen0000.json          generation 0: every worker's initial values (no input)
#   gen0000/<pack>/            state.ckpt, results.json and <worker>/ run files of each pack
#                              (a directory output: rules read the files in it)
#   plan_gen0001.json          from every pack's results of generation 0; ...
# The plans are a `checkpoint`: the DAG grows one generation at a time, so no job of a generation
# after the stop is ever submitted.


wildcard_constraints:
    gen=r"\d{4}",
    pbt_pack="|".join(PBT_PACKS),


checkpoint pbt_plan:
    input:
        unpack(pbt_plan_inputs),
    output:
        plan=f"{PBT_DIR}/plan_gen{{gen}}.json",
    log:
        f"{LOGS}/pbt_plan/gen{{gen}}.log",
    conda:
        "../../envs/lfads.yaml"
    params:
        settings=config["search"]["pbt"],
    script:
        "../scripts/pbt_plan.py"


rule pbt_pack:
    input:
        unpack(pbt_pack_inputs),
    output:
        directory(f"{PBT_DIR}/gen{{gen}}/{{pbt_pack}}"),
    log:
        f"{LOGS}/pbt_pack/gen{{gen}}/{{pbt_pack}}.log",
    benchmark:
        f"{BENCHMARKS}/pbt_pack/gen{{gen}}/{{pbt_pack}}.tsv"
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
        packs=PBT_PACKS,
        # Outside the outputs, so a killed pack job resumes from its last epoch (rule train).
        checkpoint_dir=lambda wildcards: f"{CHECKPOINTS_DIR}/pbt/gen{wildcards.gen}/{wildcards.pbt_pack}",
    script:
        "../scripts/pbt_pack.py"


# The final population as runs: copies of the last generation's run files.
rule pbt_final:
    input:
        lambda wildcards: pbt_pack_dir(pbt_last_generation(), PBT_PACK_OF[wildcards.worker]),
    output:
        **{key: f"{RUNS_DIR}/{RUN_PREFIX}{{worker}}/{name}" for key, name in TRAIN_FILES.items()},
    log:
        f"{LOGS}/pbt_final/{{worker}}.log",
    localrule: True
    conda:
        "../../envs/lfads.yaml"
    params:
        member=lambda wildcards: wildcards.worker,
    script:
        "../scripts/run_files.py"


rule pbt_history:
    input:
        unpack(pbt_history_inputs),
    output:
        history=report(
            PBT_HISTORY,
            caption="../report/pbt_history.rst",
            category="3. Population-based training",
            labels={"dataset": DATASET, "table": "every generation and worker (TSV)"},
        ),
        curves=PBT_CURVES,
    log:
        f"{LOGS}/pbt_history.log",
    localrule: True
    conda:
        "../../envs/lfads.yaml"
    script:
        "../scripts/pbt_history.py"


ruleorder: pbt_final > run_files
