"""The `fhirimg` command line: every command and group answers --help."""
from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from fhirimg.cli import main


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, command in sorted(group.commands.items()):
        paths.append(prefix + (name,))
        if isinstance(command, click.Group):
            paths.extend(command_paths(command, prefix + (name,)))
    return paths


ALL_COMMANDS = command_paths(main)


def test_the_issue_commands_exist():
    assert {("serve",), ("worker",), ("run",), ("load",), ("check-config",), ("bench", "crud")} <= set(ALL_COMMANDS)


@pytest.mark.parametrize("path", [(), *ALL_COMMANDS], ids=lambda p: " ".join(p) or "fhirimg")
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_command_has_help(path, flag):
    result = CliRunner().invoke(main, [*path, flag])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ")
    summary = result.output.split("\n\n")[1].strip()
    assert summary and not summary.startswith("Options:"), f"{' '.join(path)} has no description"
