from lfads.infra.logs import log_to_file

with log_to_file(snakemake.log[0]):
    from lfads.search.pbt import PBTSettings, describe_plan, plan_generation, write_plan

    plan = plan_generation(
        PBTSettings.from_config(snakemake.params.settings),
        int(snakemake.wildcards.gen),
        snakemake.input.get("previous"),
        [f"{folder}/results.json" for folder in snakemake.input.get("packs", [])],
    )
    for line in describe_plan(plan):
        print(line)
    write_plan(snakemake.output.plan, plan)
