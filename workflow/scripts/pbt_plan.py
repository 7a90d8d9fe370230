import logging

from lfads.infra.logs import log_to_file
from lfads.search.pbt import PBTSettings, describe_plan, plan_generation, write_plan

with log_to_file(snakemake.log[0]):
    plan = plan_generation(
        PBTSettings.from_config(snakemake.params.settings),
        int(snakemake.wildcards.gen),
        snakemake.input.get("previous"),
        snakemake.input.get("results", []),
    )
    write_plan(snakemake.output.plan, plan)
    for line in describe_plan(plan):
        logging.getLogger("lfads.search.pbt").info("%s", line)
