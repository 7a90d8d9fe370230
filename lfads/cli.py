"""Command-line entry: `python -m lfads <command> ...` (also installed as `lfads`).

Each command lives in its own module, which defines `add_arguments(parser)` and
`run(args) -> int`. Only the chosen command's module is imported, so
`python -m lfads synthetic` never pays for importing torch. Logging is configured here, and bad
input (ValueError, or an OSError such as a missing file) is one logged line and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synthetic": (
        "lfads.data.synthetic",
        "write the synthetic NLB-layout dataset (NWB files + true rates)",
    ),
    "fetch": ("lfads.data.dandi", "download pinned NLB assets from DANDI and verify their SHA-256"),
    "prepare": (
        "lfads.data.prepare",
        "bin NWB files and write the model's train/valid/eval tensors",
    ),
    "targets": ("lfads.data.targets", "write nlb_tools evaluation targets (with PSTHs)"),
    "train": ("lfads.training.train", "train one LFADS model"),
    "infer": ("lfads.evaluation.infer", "posterior sampling of a trained model"),
    "checkpoints": (
        "lfads.training.set_aside",
        "list the checkpoint folders set aside (size, why); --prune deletes them",
    ),
    "evaluate": (
        "lfads.evaluation.evaluate",
        "score a run's rates with nlb_tools (and against true rates)",
    ),
    "combine-submissions": (
        "lfads.evaluation.submission",
        "combine submission files into one EvalAI file (MC_Maze scaling datasets together)",
    ),
    "export-nwb": (
        "lfads.evaluation.nwb_export",
        "write a run's rates, factors and inferred inputs as an NWB file aligned to the trials",
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="lfads", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.print_help() if not argv or argv[0] in ("-h", "--help") else parser.parse_args(argv)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    command_parser = argparse.ArgumentParser(prog=f"lfads {name}", description=COMMANDS[name][1])
    module.add_arguments(command_parser)
    args = command_parser.parse_args(argv[1:])
    from lfads.infra.logs import configure

    configure()
    try:
        return int(module.run(args) or 0)
    except (ValueError, OSError) as error:  # bad input: a missing, unreadable or wrong file
        logging.getLogger("lfads").error("lfads %s: %s", name, error)
        return 2
