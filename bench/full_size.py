"""Each NLB layout at its real size, 5 ms bins: prepare, targets, 20 training epochs, infer
(`make full-size`; not part of the tests).

For each layout it writes a configfile beside its results, results/full_size/<layout>.yaml: the
NLB configfile of the layout (config/<layout>.yaml: its model sizes, batch size and
augmentations) with the built-in synthetic source at the real dataset's units and trials
(lfads.data.synthetic.REAL_SIZES), one run, 5 ms bins and `--epochs` epochs. It runs the
workflow up to that run's inference and reads the wall time and peak memory of each step from the
workflow's own benchmark files (Snakemake's `benchmark:` of each rule). It prints a table and
writes results/full_size/full_size.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYOUTS = ("mc_maze", "mc_rtt", "area2_bump", "dmfc_rsg")
RUN = "dropout~0.3"
OUTPUTS = ("targets_5ms.h5", f"runs/{RUN}/inferred.h5")  # (and all they need)
STEPS = ("fetch_synthetic", "prepare_5ms", "targets_5ms", "train/pack00", f"infer/{RUN}")


def full_size_config(nlb_layout: str, epochs: int) -> dict:
    """The layout's NLB configfile with the synthetic source at real size and one short run."""
    import yaml

    config = yaml.safe_load((REPO / "config" / f"{nlb_layout}.yaml").read_text())
    config.update(
        dataset=f"full_size_{nlb_layout}",
        phase="val",
        bin_widths=[5],
        source={"synthetic": {"seed": 0}},  # omitted sizes: the real dataset's
        search={"grid": {"dropout": [0.3]}},
    )
    config["model"]["bin_width"] = 5
    config["model"]["hparams"]["max_epochs"] = epochs
    return config


def _benchmark(results: Path, step: str) -> dict[str, float]:
    """Seconds and peak resident memory (GB) of one step, from its Snakemake benchmark file."""
    with (results / "benchmarks" / f"{step}.tsv").open() as handle:
        row = next(csv.DictReader(handle, delimiter="\t"))
    return {"s": float(row["s"]), "max_rss_gb": float(row["max_rss"]) / 1024}


def run_layout(nlb_layout: str, epochs: int, cores: int, workdir: Path) -> dict:
    """Run one layout's full-size workflow up to inference; its steps' seconds and peak memory."""
    import yaml

    config = full_size_config(nlb_layout, epochs)
    configfile = workdir / "results" / "full_size" / f"{nlb_layout}.yaml"
    configfile.parent.mkdir(parents=True, exist_ok=True)
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    results = workdir / "results" / config["dataset"] / "val"
    targets = [f"results/{config['dataset']}/val/{path}" for path in OUTPUTS]
    command = [
        *(sys.executable, "-m", "snakemake", *targets),
        *("--snakefile", str(REPO / "workflow" / "Snakefile"), "--directory", str(workdir)),
        *("--cores", str(cores), "--configfile", str(configfile)),
    ]
    print(f"{nlb_layout}: snakemake {' '.join(command[3:])}", flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return {
        "wall_s": time.perf_counter() - started,
        "steps": {step: _benchmark(results, step) for step in STEPS},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated layouts")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    parser.add_argument("--cores", type=int, default=2, help="Snakemake --cores")
    parser.add_argument("--workdir", type=Path, default=REPO, help="where results/ is written")
    args = parser.parse_args(argv)
    table = {}
    for nlb_layout in args.layouts.split(","):
        table[nlb_layout] = run_layout(nlb_layout, args.epochs, args.cores, args.workdir)
    out = args.workdir / "results" / "full_size" / "full_size.json"
    out.write_text(json.dumps(table, indent=2) + "\n")
    print(f"\n{'layout':<12} " + " ".join(f"{step.split('/')[0]:>22}" for step in STEPS))
    for nlb_layout, entry in table.items():
        cells = [
            f"{entry['steps'][step]['s']:>8.0f} s {entry['steps'][step]['max_rss_gb']:>6.2f} GB"
            for step in STEPS
        ]
        print(f"{nlb_layout:<12} " + " ".join(f"{cell:>22}" for cell in cells))
    print(f"(wall time and peak resident memory per step; wrote {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
