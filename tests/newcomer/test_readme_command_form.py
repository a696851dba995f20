"""The README says once how to put `fhirimg` on PATH and then writes every command one way."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.rst"


def literal_lines(text: str) -> list[str]:
    """The indented lines of literal and code blocks (where commands are)."""
    return [line.strip() for line in text.splitlines() if line.startswith("    ") and line.strip()]


def test_the_readme_says_once_how_to_put_fhirimg_on_path():
    text = README.read_text()
    assert ". .venv/bin/activate" in text
    assert len(re.findall(r"\.venv/bin/fhirimg", text)) == 1  # in that sentence: "without it, type ..."


def test_every_command_line_uses_the_plain_form():
    lines = literal_lines(README.read_text())
    commands = [line for line in lines if re.search(r"(^|[\s$(])(\S*/)?fhirimg (load|token|run|serve|worker|bench|"
                                                     r"clients|transfer-report|replicate|check-config|audit)\b", line)]
    assert commands, "no fhirimg command found in the README's literal blocks"
    assert not [line for line in commands if "bin/fhirimg" in line]
