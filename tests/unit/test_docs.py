"""Every "protocol.md N.M" / "protocol N.M" reference in the repository names a section of docs/protocol.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, List, Set, Tuple

REPO = Path(__file__).resolve().parents[2]
PROTOCOL = REPO / "docs" / "protocol.md"
SCANNED = ("tinkex", "tests", "bench", "examples")
# "protocol.md 7.4/7.5", "protocol 4.8, 7.4, 9.3", "protocol.md 9", "protocol.md sections 4 and 9"
NUMBER = r"\d+(?:\.\d+)?"
REFERENCE = re.compile(rf"protocol(?:\.md)?(?:'s)?\s+(?:sections?\s+)?({NUMBER}(?:\s*(?:,|/|and)\s*{NUMBER})*)")


def sections() -> Set[str]:
    headings = re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.?\s", PROTOCOL.read_text(encoding="utf-8"), re.MULTILINE)
    return set(headings)


def references() -> Iterator[Tuple[str, str]]:
    files: List[Path] = [REPO / "README.md"]
    for folder in SCANNED:
        files.extend((REPO / folder).rglob("*.py"))
    for path in files:
        for match in REFERENCE.finditer(path.read_text(encoding="utf-8")):
            for number in re.findall(NUMBER, match.group(1)):
                yield f"{path.relative_to(REPO)}", number


def test_protocol_references_resolve() -> None:
    known = sections()
    found = list(references())
    assert len(found) > 20  # the pattern still finds the references it is meant to check
    dangling = [(where, number) for where, number in found if number not in known]
    assert not dangling, f"references to sections docs/protocol.md does not have: {dangling}"


def test_the_readme_links_the_protocol_document() -> None:
    assert "(docs/protocol.md)" in (REPO / "README.md").read_text(encoding="utf-8")
