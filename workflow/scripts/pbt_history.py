from pathlib import Path

from lfads.infra.logs import log_to_file

with log_to_file(snakemake.log[0]):
    from lfads.search.pbt import history_rows, read_plan, read_results, write_curves, write_history

    plans = [read_plan(path) for path in snakemake.input.plans]
    trained = [plan for plan in plans if not plan.stop]
    results = []  # per generation, in worker order
    per_generation = len(snakemake.input.packs) // len(trained)  # generation-major
    for generation, plan in enumerate(trained):
        folders = snakemake.input.packs[
            generation * per_generation : (generation + 1) * per_generation
        ]
        by_name = {
            r.name: r for folder in folders for r in read_results(Path(folder) / "results.json")
        }
        results.append([by_name[worker.name] for worker in plan.workers])
    write_history(snakemake.output.history, history_rows(trained, results))
    write_curves(snakemake.output.curves, results)
    print(f"{len(trained)} generation(s): {plans[-1].stop_reason}")
