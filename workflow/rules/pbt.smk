# Population-based training (search.pbt; lfads/search/pbt.py): generations of worker jobs, a
# plan between generations, and the final population as runs/pbt-<worker>/ for infer, evaluate
# and aggregate. Included only for a PBT search.
#
# results/<dataset>/<phase>/pbt/
#   plan_gen0000.json          generation 0: every worker's initial values (no input)
#   gen0000/<worker>/          its outputs: state.ckpt, result.json, model.ckpt, metrics.csv, ...
#   plan_gen0001.json          from every result of generation 0: who copies whom, new values;
#   ...                        a plan with "stop": true ends the search and plans no worker
# The plans are a `checkpoint`: the DAG grows one generation at a time, so no job of a generation
# after the stop is ever submitted.
from lfads.search.pbt import RUN_PREFIX, PBTSettings, generation_name, read_plan

PBT = PBTSettings.from_config(config["search"]["pbt"])
PBT_DIR = f"{RESULTS}/pbt"
PBT_HISTORY = f"{RESULTS}/pbt_history.tsv"
PBT_FIGURE = f"{RESULTS}/figures/pbt.png"
RUN_FILES_OF_WORKER = {"model": "model.ckpt", "metrics": "metrics.csv", "hparams": "hparams.yaml"}


wildcard_constraints:
    gen=r"\d{4}",
    worker="|".join(PBT.worker_names),


def pbt_worker_dir(generation, worker):
    return f"{PBT_DIR}/gen{generation_name(int(generation))}/{worker}"


def pbt_plan_file(generation):
    """The plan of `generation` once its checkpoint job has run (raises Snakemake's
    IncompleteCheckpointException before: the DAG is then re-evaluated)."""
    return checkpoints.pbt_plan.get(gen=generation_name(int(generation))).output.plan


def pbt_last_generation():
    """The last generation that trains: the one before the first plan that stops."""
    generation = 0
    while not read_plan(pbt_plan_file(generation + 1)).stop:
        generation += 1
    return generation


def pbt_plan_inputs(wildcards):
    generation = int(wildcards.gen)
    if generation == 0:
        return {}
    return {
        "previous": f"{PBT_DIR}/plan_gen{generation_name(generation - 1)}.json",
        "results": [
            f"{pbt_worker_dir(generation - 1, worker)}/result.json" for worker in PBT.worker_names
        ],
    }


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


def pbt_worker_inputs(wildcards):
    plan_path = pbt_plan_file(wildcards.gen)
    inputs = {"plan": plan_path, "data": PREPARED_FOR_MODEL}
    generation = int(wildcards.gen)
    if generation > 0:
        parent = read_plan(plan_path).worker(wildcards.worker).parent
        inputs["start_state"] = f"{pbt_worker_dir(generation - 1, parent)}/state.ckpt"
    return inputs


rule pbt_worker:
    input:
        unpack(pbt_worker_inputs),
    output:
        state=f"{PBT_DIR}/gen{{gen}}/{{worker}}/state.ckpt",
        result=f"{PBT_DIR}/gen{{gen}}/{{worker}}/result.json",
        model=f"{PBT_DIR}/gen{{gen}}/{{worker}}/model.ckpt",
        metrics=f"{PBT_DIR}/gen{{gen}}/{{worker}}/metrics.csv",
        hparams=f"{PBT_DIR}/gen{{gen}}/{{worker}}/hparams.yaml",
    log:
        f"{LOGS}/pbt_worker/gen{{gen}}/{{worker}}.log",
    benchmark:
        f"{BENCHMARKS}/pbt_worker/gen{{gen}}/{{worker}}.tsv"
    conda:
        "../../envs/lfads.yaml"
    threads: config["resources"]["train"]["threads"]
    resources:
        gpu=config["resources"]["train"]["gpu"],
        runtime=config["resources"]["train"]["runtime"],
        mem_mb=config["resources"]["train"]["mem_mb"],
    params:
        # The plan (an input) adds the searched values and the generation's end epoch.
        base_hparams=config["model"]["hparams"],
        # Outside the outputs, so a killed worker job resumes from its last epoch (rule train).
        checkpoint_dir=lambda wildcards: f"{CHECKPOINTS_DIR}/pbt/gen{wildcards.gen}/{wildcards.worker}",
    script:
        "../scripts/pbt_worker.py"


# The final population as runs: copies of the last generation's model files.
ruleorder: pbt_final > train


rule pbt_final:
    input:
        unpack(
            lambda wildcards: {
                key: f"{pbt_worker_dir(pbt_last_generation(), wildcards.worker)}/{name}"
                for key, name in RUN_FILES_OF_WORKER.items()
            }
        ),
    output:
        model=f"{RUNS_DIR}/{RUN_PREFIX}{{worker}}/model.ckpt",
        metrics=f"{RUNS_DIR}/{RUN_PREFIX}{{worker}}/metrics.csv",
        hparams=f"{RUNS_DIR}/{RUN_PREFIX}{{worker}}/hparams.yaml",
    log:
        f"{LOGS}/pbt_final/{{worker}}.log",
    script:
        "../scripts/pbt_final.py"


def pbt_history_inputs(wildcards):
    last = pbt_last_generation()
    workers = [pbt_worker_dir(g, worker) for g in range(last + 1) for worker in PBT.worker_names]
    return {
        "plans": [f"{PBT_DIR}/plan_gen{generation_name(g)}.json" for g in range(last + 2)],
        "results": [f"{folder}/result.json" for folder in workers],
        "curves": [f"{folder}/metrics.csv" for folder in workers],
    }


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
        figure=report(
            PBT_FIGURE,
            caption="../report/pbt.rst",
            category="3. Population-based training",
            labels={"dataset": DATASET, "figure": "hyperparameters and loss over epochs"},
        ),
    log:
        f"{LOGS}/pbt_history.log",
    conda:
        "../../envs/lfads.yaml"
    script:
        "../scripts/pbt_history.py"


localrules:
    pbt_plan,
    pbt_final,
    pbt_history,
