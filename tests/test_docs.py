"""The documentation cannot drift from the code: README stays short and undated, the
generated reference pages are current, and every `enet ...` command shown in README.md or
the docs parses against the real CLI (an unknown command or option fails). CI also builds
the site in strict mode (.ci/run), so a broken link or a missing page fails there."""

import importlib.util
import json
import re
import shlex
from typing import Iterator, List, Tuple

import pytest

from enet_testing import REPO

DOCS = REPO / "docs"
README = REPO / "README.md"
MAX_README_LINES = 200
# A measurement stamped with when it was taken belongs on the results page, not the README.
DATED = re.compile(r"\b20\d\d-\d\d-\d\d\b|\b\d\d:\d\d UTC\b|measured (here )?on \w+ \d")


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_short_and_carries_no_dated_measurement():
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_README_LINES
    assert DATED.findall(text) == []


def test_the_dated_measurement_rule_catches_one():
    assert DATED.search("330 tests in 25:31 (2026-12-04)")
    assert DATED.search("Measured here on 2026-12-04 at 15:59")


def test_the_generated_reference_pages_are_current():
    for path, text in _generator().pages().items():
        assert path.read_text() == text, f"{path} is stale: run python docs/gen_reference.py"


def test_the_cli_reference_lists_every_command_and_option():
    """The page is Typer's own rendering of the app: every command and every option of a
    command appear on it (so a new option cannot be left out)."""
    import typer

    from enet_cli.cli import app

    page = (DOCS / "reference" / "cli.md").read_text()
    sections = dict(re.findall(r"^##+ `([^`]+)`\n(.*?)(?=^##+ |\Z)", page, re.M | re.S))
    for path, command in _commands(typer.main.get_command(app)):
        section = sections.get(" ".join(path))
        assert section is not None, path
        shown = set()
        for span in re.findall(r"^\* `([^`]*)`", section, re.M):
            shown.update(re.findall(r"(?<![\w-])--?[\w][\w-]*", span))
        for param in command.params:
            for option in [*param.opts, *param.secondary_opts]:
                if option.startswith("-"):
                    assert option in shown, (path, option)


def _commands(group, path=("enet",)) -> Iterator[Tuple[Tuple[str, ...], object]]:
    for name, command in getattr(group, "commands", {}).items():
        here = (*path, name)
        if hasattr(command, "commands"):
            yield from _commands(command, here)
        else:
            yield here, command


def _shown_commands() -> Iterator[Tuple[str, str]]:
    """(where, command line) for every `enet ...` line in a code block of README.md or docs."""
    for page in [README, *sorted(DOCS.rglob("*.md"))]:
        if page.parent.name == "reference" and page.name == "cli.md":
            continue  # generated from the CLI itself
        fenced = False  # inside a block of commands (a `text` block is a synopsis)
        opened = False
        pending = ""
        for number, line in enumerate(page.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                opened = not opened
                fenced = opened and line.strip()[3:] in ("", "bash", "console", "sh")
                continue
            if not fenced:
                continue
            line = pending + line.strip()
            pending = ""
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            for part in re.split(r"\s*(?:\||&&|;)\s*", line.lstrip("$ ")):
                if part.startswith("enet "):
                    yield f"{page.relative_to(REPO)}:{number}", part


def _click_error(name: str) -> type:
    """Typer vendors click: its exception classes, reached through a public one."""
    import typer

    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


def _parse(words: List[str]) -> None:
    """Resolve the subcommand and parse its options as click does (no command runs)."""
    import typer

    from enet_cli.cli import app

    command = typer.main.get_command(app)
    context = command.make_context("enet", list(words), resilient_parsing=True)
    while hasattr(command, "get_command"):  # a group
        # click >= 8.2 keeps the subcommand's name apart from its arguments
        protected = getattr(context, "_protected_args", None) or context.protected_args
        rest = [*protected, *context.args]
        if not rest or rest[0] in ("--help", "-h"):
            return
        name, *args = rest
        found = command.get_command(context, name)
        if found is None:
            raise _click_error("UsageError")(f"no such command {name!r}")
        command = found
        leaf = not hasattr(command, "get_command")  # its options parsed for real
        context = command.make_context(name, args, parent=context, resilient_parsing=not leaf)


SHOWN = list(_shown_commands())


def test_the_docs_show_commands():
    assert len(SHOWN) > 40  # the extraction finds them (a regression would find none)


@pytest.mark.parametrize("where, line", SHOWN, ids=[where for where, _ in SHOWN])
def test_every_command_shown_in_the_docs_parses(where, line):
    words = shlex.split(line.split(" #", 1)[0])[1:]
    try:
        _parse(words)
    except _click_error("ClickException") as err:
        pytest.fail(f"{where}: {line!r}: {err.format_message()}")


def test_an_unknown_option_or_command_fails_the_parse():
    _parse(["train", "data/camvid", "--epochs", "3"])
    _parse(["jobs", "download", "my-job", "--out", "d"])
    for wrong in (["train", "d", "--epoch", "3"], ["trian", "d"], ["jobs", "lst"]):
        with pytest.raises(_click_error("ClickException")):
            _parse(wrong)


def test_every_results_table_is_a_scripts_output_and_is_shown():
    """docs/results/NAME.md is written by a benchmark script's publish("NAME", ...) with
    its JSON twin, names the command that reproduces it (that script, with --write), and
    is included by a page of the site: a figure cannot be typed in by hand or orphaned."""
    results = DOCS / "results"
    tables = sorted(results.glob("*.md"))
    assert tables, "no results tables"
    pages = "\n".join(p.read_text() for p in DOCS.rglob("*.md") if p.parent != results)
    for table in tables:
        record = json.loads(table.with_suffix(".json").read_text())
        script = re.match(r"python (benchmarks/\w+\.py)\b.* --write\b", record["command"])
        assert script, (table.name, record["command"])
        source = (REPO / script.group(1)).read_text()
        # publish("NAME", ...), or publish(f"PREFIX{...}", ...) for one table per argument
        named = re.findall(r"""publish\((f?)["']([\w-]*)(\{?)""", source)
        assert any(
            stem == table.stem if not (f and brace) else table.stem.startswith(stem)
            for f, stem, brace in named
        ), (table, named)
        assert table.read_text().startswith(f"`{record['command']}` ("), table.name
        assert f'--8<-- "results/{table.name}"' in pages, f"{table.name} is on no page"
