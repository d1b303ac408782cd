"""A deployment page's commands as a test runs them: the shell blocks marked `<!-- example: installs -->` (in a
section of the page), their backslash continuations joined, the lines a test machine provides for instead (apt-get,
git clone) taken out, and the values the page tells a reader to change replaced by the test's, each of which must be
on the page: a page that changes a step or drops a value fails the test that runs it."""

from __future__ import annotations

import re

MARKER = "<!-- example: installs -->"
# Each command echoed with the script's seconds so far: `slowest` reads where the time went from the trace.
TRACE = "PS4='+ ${SECONDS}s: '\n"
TRACED_RE = re.compile(r"^\++ (\d+)s: (.*)$")
BLOCK_RE = re.compile(re.escape(MARKER) + r"\n```sh\n(.*?)\n```", re.S)


def section(text: str, start: str | None = None, end: str | None = None) -> str:
    """The page's text from the heading `start` (the beginning without it) up to the heading `end` (the end without
    it); both must be on the page."""
    if start is not None:
        assert start in text, f"the page has no {start!r}: update the test"
        text = text[text.index(start) :]
    if end is not None:
        assert end in text, f"the page has no {end!r}: update the test"
        text = text[: text.index(end)]
    return text


def page_blocks(text: str) -> list[list[str]]:
    """The command blocks marked `installs` in `text`, each as its lines."""
    return [found.group(1).splitlines() for found in BLOCK_RE.finditer(text)]


def logical_lines(lines: list[str]) -> list[str]:
    """Lines with their backslash continuations joined."""
    out: list[str] = []
    pending = ""
    for line in lines:
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        out.append(pending + line)
        pending = ""
    return out


def apt_packages(blocks: list[list[str]]) -> list[str]:
    """What the blocks' `apt-get install` lines install."""
    packages: list[str] = []
    for line in logical_lines([line for block in blocks for line in block]):
        if line.startswith("apt-get install "):
            packages += [word for word in line.split()[2:] if not word.startswith("-")]
    return packages


def script(blocks: list[list[str]], provided: tuple[str, ...] = (), replaced: dict[str, str] | None = None) -> str:
    """The blocks' commands as one shell script (stopping at the first failure, each command echoed): the lines
    starting with one of `provided` taken out (each must be there), then each key of `replaced` (each must be
    there) replaced by its value."""
    kept = []
    found = set()
    for line in logical_lines([line for block in blocks for line in block]):
        matched = next((p for p in provided if line.startswith(p)), None)
        if matched is not None:
            found.add(matched)
            continue
        kept.append(line)
    assert found == set(provided), f"the page no longer has {set(provided) - found}: update the test"
    text = TRACE + "set -eux\n" + "\n".join(kept) + "\n"
    for old, new in (replaced or {}).items():
        assert old in text, f"the page no longer has {old!r}: update the test"
        text = text.replace(old, new)
    return text


def slowest(trace: str, count: int = 5) -> list[tuple[int, str]]:
    """The `count` commands of a script's trace (its stderr) that took longest: (seconds, command), longest first."""
    steps = [(int(m.group(1)), m.group(2)[:100]) for m in map(TRACED_RE.match, trace.splitlines()) if m]
    spans = [(later[0] - at, command) for (at, command), later in zip(steps, steps[1:], strict=False)]
    return sorted(spans, key=lambda span: -span[0])[:count]
