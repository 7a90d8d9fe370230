# Training and posterior sampling: one job per run of the hyperparameter search.


rule train:
    input:
        data=PREPARED_FOR_MODEL,
    output:
        model=f"{RUNS_DIR}/{{run}}/model.ckpt",
        metrics=f"{RUNS_DIR}/{{run}}/metrics.csv",
        hparams=f"{RUNS_DIR}/{{run}}/hparams.yaml",
    log:
        f"{LOGS}/train/{{run}}.log",
    benchmark:
        f"{BENCHMARKS}/train/{{run}}.tsv"
    conda:
        "../../envs/lfads.yaml"
    threads: config["resources"]["train"]["threads"]
    resources:
        gpu=config["resources"]["train"]["gpu"],
        runtime=config["resources"]["train"]["runtime"],
        mem_mb=config["resources"]["train"]["mem_mb"],
    params:
        hparams=lambda wildcards: run_hparams(wildcards.run),
        # Outside the declared outputs, so a killed job resumes when Snakemake reruns it. A state
        # of another run (changed data or hyperparameters), or one already delivered (--forcerun),
        # is set aside there and the run starts afresh (lfads.training.resume).
        checkpoint_dir=lambda wildcards: f"{CHECKPOINTS_DIR}/{wildcards.run}",
    script:
        "../scripts/train.py"


rule infer:
    input:
        model=f"{RUNS_DIR}/{{run}}/model.ckpt",
        data=PREPARED_FOR_MODEL,
    output:
        f"{RUNS_DIR}/{{run}}/inferred.h5",
    log:
        f"{LOGS}/infer/{{run}}.log",
    benchmark:
        f"{BENCHMARKS}/infer/{{run}}.tsv"
    conda:
        "../../envs/lfads.yaml"
    threads: config["resources"]["infer"]["threads"]
    resources:
        gpu=config["resources"]["infer"]["gpu"],
        runtime=config["resources"]["infer"]["runtime"],
        mem_mb=config["resources"]["infer"]["mem_mb"],
    params:
        n_samples=config["model"]["n_samples"],
    script:
        "../scripts/infer.py"
