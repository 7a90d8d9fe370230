from pathlib import Path

from lfads.evaluation.figures import pbt_progress
from lfads.infra.logs import log_to_file
from lfads.search.pbt import history_rows, read_history, read_plan, read_result, write_history

with log_to_file(snakemake.log[0]):
    plans = [read_plan(path) for path in snakemake.input.plans]
    trained = [plan for plan in plans if not plan.stop]
    results = [read_result(path) for path in snakemake.input.results]  # generation by generation
    population = len(trained[0].workers)
    by_generation = [results[g * population : (g + 1) * population] for g in range(len(trained))]
    write_history(snakemake.output.history, history_rows(trained, by_generation))
    curves = {
        (int(Path(path).parent.parent.name.removeprefix("gen")), Path(path).parent.name): Path(path)
        for path in snakemake.input.curves
    }
    pbt_progress(read_history(snakemake.output.history), curves, snakemake.output.figure)
