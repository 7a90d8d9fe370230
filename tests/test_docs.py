"""The documentation is checked against the code: every HParams field (with its default) is in
lfads/README.md, every configfile key of the schema and every SyntheticSettings field (with its
default) in config/README.md, and every README section the code points to exists."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from lfads.config import load_yaml
from lfads.data.synthetic import SyntheticSettings
from lfads.model.hparams import HParams
from lfads.search.pbt import PBTSettings

LFADS_README = REPO / "lfads" / "README.md"
CONFIG_README = REPO / "config" / "README.md"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


# -- reading the Markdown ------------------------------------------------------------------------
def heading_name(heading: str) -> str:
    """A heading's name, as references give it: "### Where the time goes: `rnn_impl`" -> "Where the
    time goes"; "## `source.dandi`" -> "source.dandi"; "### Files `train` writes" -> "Files train
    writes"."""
    name = heading.lstrip("#").strip()
    name = re.split(r" \(|:", name, maxsplit=1)[0]
    return name.replace("`", "").strip()


def sections(path: Path) -> dict[str, str]:
    """{heading name: text up to the next heading} of a Markdown file; "" names the text before
    the first heading. Fenced code is skipped (a `# comment` in it is no heading)."""
    found: dict[str, list[str]] = {"": []}
    current, in_code = "", False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(r"#{1,6} ", line):
            current = heading_name(line)
            assert current not in found, f"{path}: two sections named {current!r}"
            found[current] = []
            continue
        found[current].append(line)
    return {name: "\n".join(lines) for name, lines in found.items()}


def key_tables(text: str) -> list[list[list[str]]]:
    """The rows (lists of cells) of every Markdown table in `text` whose first header is "key"."""
    tables, rows = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
            continue
        if rows and rows[0][0] == "key":
            tables.append([row for row in rows[2:]])  # without the header and the |---| line
        rows = []
    return tables


def row_keys(cell: str) -> list[str]:
    """The keys a table row documents: its first cell's `code` spans; `.seed` after
    `search.random.n` is `search.random.seed`."""
    keys: list[str] = []
    for name in re.findall(r"`([^`]+)`", cell):
        if name.startswith("."):
            assert keys, f"{cell!r}: {name} continues no key"
            name = keys[-1].rpartition(".")[0] + name
        keys.append(name)
    return keys


def documented_defaults(path: Path, section: str) -> dict[str, str | None]:
    """{key: default as written} of the key tables of a README section with a "default" column
    (None where the cell is empty); a row of several keys gives one comma-separated default each."""
    text = sections(path)[section]
    defaults: dict[str, str | None] = {}
    for table in key_tables(text):
        for cells in table:
            keys, default = row_keys(cells[0]), cells[1]
            values = default.split(", ") if len(keys) > 1 else [default]
            assert len(values) == len(keys), f"{path}, {section!r}: {cells[:2]}: one default a key"
            for key, value in zip(keys, values):
                assert key not in defaults, f"{path}, {section!r}: {key} documented twice"
                defaults[key] = value.strip("`") or None
    assert defaults, f"{path}: no key table in section {section!r}"
    return defaults


def parse_default(text: str):
    """A documented default as YAML reads it (1e-4: a number, as HParams.from_yaml reads it)."""
    return yaml.safe_load(text)


# -- lfads/README.md: hyperparameters -------------------------------------------------------------
def test_every_hparams_field_is_documented_with_its_default():
    documented = documented_defaults(LFADS_README, "Hyperparameters")
    fields = [field.name for field in dataclasses.fields(HParams)]
    assert sorted(set(fields) - set(documented)) == [], "HParams fields missing in lfads/README.md"
    assert sorted(set(documented) - set(fields)) == [], "lfads/README.md keys that are no field"
    defaults = HParams()
    wrong = {}
    for key, text in documented.items():
        if text is None:  # the table gives none
            continue
        value = getattr(HParams.from_dict({key: parse_default(text)}), key)
        if value != getattr(defaults, key):
            wrong[key] = (text, getattr(defaults, key))
    assert wrong == {}, "lfads/README.md: documented default, HParams default"


# -- config/README.md: every schema key -----------------------------------------------------------
def schema_keys(schema: dict) -> tuple[list[str], set[str]]:
    """Dotted paths of every key of the configfile schema (properties, following $refs into
    $defs: source.dandi.assets.train.sha256), and the $defs the walk went through."""
    keys: list[str] = []
    visited: set[str] = set()

    def walk(node: dict, prefix: str) -> None:
        while "$ref" in node:
            name = node["$ref"].removeprefix("#/$defs/")
            visited.add(name)
            node = schema["$defs"][name]
        for name, child in node.get("properties", {}).items():
            keys.append(prefix + name)
            walk(child, prefix + name + ".")

    walk(schema, "")
    return keys, visited


def is_key(section: str) -> bool:
    """Whether a section name is a configfile key (`source.dandi`), not a title."""
    return re.fullmatch(r"[a-z_]+(\.[a-z_]+)*", section) is not None


def documented_config_keys() -> list[str]:
    """Keys of config/README.md: those of its key tables, with the section's key in front
    (`folder` in section `source.local` is source.local.folder), and the sections' keys. `*`
    stands for any one key."""
    keys = [section for section in sections(CONFIG_README) if is_key(section)]
    for section, text in sections(CONFIG_README).items():
        prefix = section + "." if is_key(section) else ""
        for table in key_tables(text):
            for cells in table:
                keys += [prefix + key for key in row_keys(cells[0])]
    return keys


def matches(pattern: str, key: str) -> bool:
    """Whether a documented key (`*` for any one key) is `key`."""
    pattern_parts, key_parts = pattern.split("."), key.split(".")
    return len(pattern_parts) == len(key_parts) and all(
        p in ("*", k) for p, k in zip(pattern_parts, key_parts)
    )


def documents(pattern: str, key: str) -> bool:
    """Whether a documented key documents `key`: it is `key` or a key inside it (a mapping is
    documented by its keys)."""
    parts = pattern.split(".")
    return matches(".".join(parts[: key.count(".") + 1]), key)


def test_every_schema_key_is_documented_in_config_readme():
    schema = load_yaml(SCHEMA)
    keys, visited = schema_keys(schema)
    with_properties = {name for name, node in schema["$defs"].items() if "properties" in node}
    assert with_properties <= visited, "the walk missed $defs: follow how the schema uses them"
    assert {"prepare.valid_fraction", "source.dandi.assets.train.sha256"} <= set(keys)
    documented = documented_config_keys()

    def is_documented(key: str) -> bool:
        return any(documents(pattern, key) for pattern in documented)

    missing = [key for key in keys if not is_documented(key)]
    assert missing == [], "schema keys missing in config/README.md (under their section)"
    # source.synthetic and search.pbt are plain mappings in the schema: their keys are the fields
    # of SyntheticSettings and PBTSettings, checked against config/README.md by the next tests
    stale = [
        pattern
        for pattern in documented
        if not pattern.startswith(("source.synthetic.", "search.pbt."))
        and not any(matches(pattern, k) for k in keys)
    ]
    assert stale == [], "config/README.md documents keys the schema does not have"


def test_synthetic_settings_are_documented_with_their_defaults():
    from lfads.data.synthetic import REAL_SIZES

    documented = documented_defaults(CONFIG_README, "source.synthetic")
    fields = {  # (nlb_layout is the configfile's top-level key)
        field.name: field.default
        for field in dataclasses.fields(SyntheticSettings)
        if field.name != "nlb_layout"
    }
    assert sorted(documented) == sorted(fields)
    sizes = set(REAL_SIZES["mc_maze"])
    wrong = {
        key: (text, fields[key])
        for key, text in documented.items()
        if (text != "real" if key in sizes else text is None or parse_default(text) != fields[key])
    }
    assert wrong == {}, "config/README.md, source.synthetic: documented default, default"
    # the table of real sizes, layout by layout
    text = sections(CONFIG_README)["source.synthetic"]
    for layout, size in REAL_SIZES.items():
        row = (
            f"| {layout} | {size['n_heldin']}, {size['n_heldout']} | {size['n_train_trials']}, "
            f"{size['n_val_trials']}, {size['n_test_trials']} |"
        )
        assert row in text, row


def test_pbt_settings_are_documented_with_their_defaults():
    documented = documented_defaults(CONFIG_README, "search.pbt")
    assert sorted(documented) == sorted(field.name for field in dataclasses.fields(PBTSettings))
    defaults = PBTSettings()
    wrong = {
        key: (text, getattr(defaults, key))
        for key, text in documented.items()
        if key != "hyperparameters" and parse_default(text) != getattr(defaults, key)
    }
    assert wrong == {}, "config/README.md, search.pbt: documented default, default"
    # the default search space, named in the hyperparameters row
    table = sections(CONFIG_README)["search.pbt"]
    row = next(line for line in table.splitlines() if line.startswith("| `hyperparameters`"))
    assert [s.name for s in defaults.hyperparameters if f"`{s.name}`" not in row] == []


# -- references from the code to README sections --------------------------------------------------
README_PATH = r"(?:[\w.-]+/)*README\.md"
# lfads/README.md, "Section" / README.md ("Section") / see the "Section" section (of README.md)
SECTION_REFERENCES = [
    rf'(?P<file>{README_PATH})(?:,\s*|\s*\(\s*)"(?P<section>[^"]+)"',
    rf'[Ss]ee (?:the )?"(?P<section>[^"]+)" section(?: (?:of|in) (?P<file>{README_PATH}))?',
]
CODE = sorted(
    path
    for folder in ("lfads", "workflow")
    for path in (REPO / folder).rglob("*")
    if path.is_file() and (path.suffix in (".py", ".smk", ".yaml") or path.name == "Snakefile")
)


def references(path: Path) -> list[tuple[str | None, str]]:
    """(README path or None, section) of every section reference in a file; a reference may
    run over lines of a docstring or of # comments."""
    text = re.sub(r"\s*\n\s*(?:#\s*)?", " ", path.read_text())
    return [
        (match["file"], match["section"].replace("`", ""))
        for pattern in SECTION_REFERENCES
        for match in re.finditer(pattern, text)
    ]


def test_the_code_points_to_readme_files_and_sections_that_exist():
    readmes = [REPO / "README.md", LFADS_README, CONFIG_README]
    found, wrong = [], []
    for path in CODE:
        where = path.relative_to(REPO)
        for name in re.findall(README_PATH, path.read_text()):
            if not (REPO / name).is_file():
                wrong.append(f"{where}: {name} does not exist")
        for name, section in references(path):
            found.append(section)
            candidates = [REPO / name] if name else readmes
            if not any(readme.is_file() and section in sections(readme) for readme in candidates):
                wrong.append(f"{where}: no section {section!r} in {name or 'the READMEs'}")
    assert len(found) >= 4, found  # lfads/README.md's "Prepared tensors", "Inference file", ...
    assert wrong == []


@pytest.mark.parametrize(
    "heading, name",
    [
        ("### Where the time goes: `rnn_impl`", "Where the time goes"),
        ("## Prepared tensors (`lfads.formats.prepared`; rule `prepare`)", "Prepared tensors"),
        ("## `source.dandi`", "source.dandi"),
        ("### Files `train` writes", "Files train writes"),
    ],
)
def test_heading_names(heading, name):
    assert heading_name(heading) == name
