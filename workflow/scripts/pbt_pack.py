from pathlib import Path

from lfads.infra.logs import log_to_file

with log_to_file(snakemake.log[0]):
    import torch

    from lfads.search.pbt import PBTSettings, read_plan
    from lfads.training.population import train_generation_of_pack

    torch.set_num_threads(snakemake.threads)
    packs = snakemake.params.packs
    previous = [Path(path) for path in snakemake.input.get("previous", [])]
    train_generation_of_pack(
        PBTSettings.from_config(snakemake.params.settings),
        snakemake.params.base_hparams,
        [Path(snakemake.input.data)],
        read_plan(snakemake.input.plan),
        packs[snakemake.wildcards.pbt_pack],
        packs,
        {folder.name: folder / "state.ckpt" for folder in previous},  # .../gen<g>/<pack>
        Path(snakemake.output[0]),
        Path(snakemake.params.checkpoint_dir),
        device="auto",
        rnn_impl=snakemake.config["model"]["rnn_impl"],
    )
