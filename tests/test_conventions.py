"""The Snakemake catalog's conventions: .test/ run by CI, the catalog file, LICENSE, help text."""

from __future__ import annotations

import argparse
import ast
import importlib
import shutil

import pytest
import yaml
from conftest import REPO, RUN_FILE_NAMES, job_count, run_snakemake

from lfads.cli import COMMANDS


def test_test_config_dry_run(tmp_path, snakemake_in_process):
    """`snakemake --directory .test -n`, as the catalog runs it (the Snakefile finds the config)."""
    shutil.copytree(REPO / ".test", tmp_path / ".test")
    result = snakemake_in_process(
        "--snakefile",
        str(REPO / "workflow" / "Snakefile"),
        "--directory",
        str(tmp_path / ".test"),
        "-n",
    )
    assert result.returncode == 0, result.stdout
    for rule, count in (("train", 1), ("export_nwb", 1), ("best_nwb", 1), ("figures", 1)):
        assert job_count(result.stdout, rule) == count, rule


@pytest.mark.slow
def test_test_config_runs_end_to_end(tmp_path):
    shutil.copytree(REPO / ".test", tmp_path / ".test")
    workdir = tmp_path / ".test"
    result = run_snakemake(
        "--snakefile",
        str(REPO / "workflow" / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    results = workdir / "results" / "ci" / "val"
    assert len(open(results / "summary.tsv").read().splitlines()) == 2  # header + the run
    assert (results / "best_rates.nwb").stat().st_size > 10_000


def test_catalog_file_names_the_usage():
    catalog = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())
    usage = catalog["usage"]
    assert set(usage) == {"mandatory-flags", "software-stack-deployment", "report"}
    assert "--configfile" in usage["mandatory-flags"]["flags"]
    assert usage["software-stack-deployment"]["conda"] is True and usage["report"] is True


def test_license_is_the_one_pyproject_names():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"  # an SPDX string: the table form is deprecated
    assert (REPO / "LICENSE").read_text().startswith("MIT License\n")
    assert "LICENSE" in project["license-files"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_line_option_has_help(command):
    parser = argparse.ArgumentParser()
    importlib.import_module(COMMANDS[command][0]).add_arguments(parser)
    undocumented = [
        action.option_strings or action.dest
        for action in parser._actions
        if not action.help and not isinstance(action, argparse._HelpAction)
    ]
    assert undocumented == [], f"lfads {command}: options without help text"


# lfads' folders from the bottom up: a module imports only from its own folder or one below it.
# The top level (lfads/config.py, the configfile check above every stage; cli.py) is above all.
LAYERS = ("infra", "model", "formats", "data", "search", "training", "evaluation", "")


def _imports(tree) -> list[str]:
    """The lfads modules a module imports, function-local included, type-checking-only not."""
    found, pending = [], [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lfads"):
            found += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("lfads")]
        pending.extend(ast.iter_child_nodes(node))
    return found


def test_imports_go_down_the_layers_and_never_in_a_circle():
    root = REPO / "lfads"
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(("lfads", *parts[: -1 if parts[-1] == "__init__" else None]))] = path
    folder = {name: name.split(".")[1] if name.count(".") else "" for name in modules}
    layer = {name: LAYERS.index(f if (root / f).is_dir() else "") for name, f in folder.items()}
    graph = {
        name: {target for target in _imports(ast.parse(path.read_text())) if target in modules}
        - {name}
        for name, path in modules.items()
    }
    upward = sorted(
        f"{name} -> {target}"
        for name, targets in graph.items()
        for target in targets
        if layer[target] > layer[name]
    )
    assert upward == []
    # no module reaches itself through its imports (Tarjan's strongly connected components)
    order, low, stack, cycles = {}, {}, [], []

    def visit(name):
        order[name] = low[name] = len(order)
        stack.append(name)
        for target in graph[name]:
            if target not in order:
                visit(target)
                low[name] = min(low[name], low[target])
            elif target in stack:
                low[name] = min(low[name], order[target])
        if low[name] == order[name]:
            component = stack[stack.index(name) :]
            del stack[stack.index(name) :]
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in sorted(graph):
        if name not in order:
            visit(name)
    assert cycles == []


def test_the_rules_alone_name_a_runs_files_and_no_folder_is_rebuilt_from_a_file():
    """A run's file names are written in workflow/rules/ (the rules declare them) and nowhere else
    in workflow/, and no rule or script climbs from a file to a folder with .parent.parent."""
    found = []
    for path in sorted((REPO / "workflow").rglob("*")):
        if path.suffix not in (".py", ".smk") and path.name != "Snakefile":
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            where = f"{path.relative_to(REPO)}:{number}: {line.strip()}"
            if ".parent.parent" in line:
                found.append(where)
            if path.parent.name != "rules" and any(
                f'"{name}' in line or f"/{name}" in line for name in RUN_FILE_NAMES.values()
            ):
                found.append(where)
    assert found == []


def test_a_command_given_a_missing_or_wrong_file_says_so_in_one_line(tmp_path, caplog):
    from lfads.cli import main

    not_a_checkpoint = tmp_path / "model.ckpt"
    not_a_checkpoint.write_text("not a checkpoint\n")
    for model, expected in (
        (tmp_path / "missing.ckpt", f"lfads infer: {tmp_path / 'missing.ckpt'}: no such"),
        (not_a_checkpoint, f"lfads infer: {not_a_checkpoint}: torch cannot read it"),
    ):
        caplog.clear()
        command = ["infer", "--model", str(model), "--data", "d.h5", "--out", "o.h5"]
        assert main(command) == 2
        (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
        assert record.getMessage().startswith(expected) and "\n" not in record.getMessage()
        assert "Traceback" not in caplog.text


@pytest.mark.parametrize(
    "configfile, says",
    [
        ("config.yaml", "One LFADS model was trained per point of the search, the models sharing"),
        ("synthetic_seeds.yaml", "search, 8 independently seeded replicas each"),
        ("synthetic_pbt.yaml", "searched by population-based training (AutoLFADS): 3 workers"),
    ],
)
def test_the_reports_method_text_is_that_of_the_search_that_ran(configfile, says):
    import types

    import jinja2

    config = yaml.safe_load((REPO / "config" / configfile).read_text())
    template = (REPO / "workflow" / "report" / "workflow.rst").read_text()
    text = jinja2.Template(template).render(
        snakemake=types.SimpleNamespace(config=config), files=[]
    )
    assert says in text
    assert ("population-based" in text) == ("pbt" in config["search"])
