# Training and posterior sampling: one `train` job per pack of runs of the hyperparameter search
# (search.pack_size runs trained together, lfads.training.train.train_pack), one `infer` per run.


rule train:
    input:
        data=PREPARED_FOR_MODEL,
    output:
        # runs/<run>/ of each member come from here (rule run_files)
        directory(f"{PACKS_DIR}/{{pack}}"),
    log:
        f"{LOGS}/train/{{pack}}.log",
    benchmark:
        f"{BENCHMARKS}/train/{{pack}}.tsv"
    conda:
        "../../envs/lfads.yaml"
    threads: config["resources"]["train"]["threads"]
    resources:
        gpu=config["resources"]["train"]["gpu"],
        runtime=config["resources"]["train"]["runtime"],
        mem_mb=config["resources"]["train"]["mem_mb"],
    params:
        members=lambda wildcards: {run: run_hparams(run) for run in PACKS[wildcards.pack]},
        # Outside the declared outputs, so a killed job resumes when Snakemake reruns it, and a
        # finished pack whose identity is unchanged only writes its outputs again. A state of
        # another pack (changed data or hyperparameters) is set aside there and the pack starts
        # afresh (lfads.training.resume).
        checkpoint_dir=lambda wildcards: f"{CHECKPOINTS_DIR}/{wildcards.pack}",
    script:
        "../scripts/train.py"


# Each run's files, from its pack's folder, where infer, evaluate and the rest look for them.
rule run_files:
    input:
        lambda wildcards: f"{PACKS_DIR}/{PACK_OF[wildcards.run]}",
    output:
        **{key: f"{RUNS_DIR}/{{run}}/{name}" for key, name in TRAIN_FILES.items()},
    log:
        f"{LOGS}/run_files/{{run}}.log",
    localrule: True
    conda:
        "../../envs/lfads.yaml"
    params:
        member=lambda wildcards: wildcards.run,
    script:
        "../scripts/run_files.py"


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
