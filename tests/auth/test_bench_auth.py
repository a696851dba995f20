"""`fhirimg bench crud --compare-auth` runs end to end (two private gunicorn servers) and prints
its comparison lines; its figures are read by people, not asserted here."""
from __future__ import annotations

from click.testing import CliRunner

from fhirimg.cli import main


def test_compare_auth_prints_both_sides_and_the_paired_difference():
    result = CliRunner().invoke(main, ["bench", "crud", "--compare-auth", "--count", "20", "--clients", "2"])
    assert result.exit_code == 0, result.output
    for row in ("read none", "read smart", "search-by-id none", "search-by-id smart"):
        line = next(line for line in result.output.splitlines() if line.startswith(row))
        assert line.split()[-6:-4] == ["60", "0"]  # 20 resources x 3 rounds, no errors
    assert "median paired difference" in result.output
