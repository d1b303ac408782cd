"""The documentation: README.md and docs/ built by MkDocs in strict mode, their relative links, and their examples run.

A fenced block of commands carries a marker comment on the line before it: `<!-- example: run -->` (every command
in it runs here, through the console script's module, and exits 0, or as its comment `# exits N: what it says` says)
or `<!-- example: TAG -->` with a TAG of NOT_RUN, which says why it cannot run in a test (it is skipped by name, with
that reason). A block of commands without a marker fails the tests.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
# Pages whose relative links are checked too: the runbooks link into docs/ (and an alert's runbook_url names them).
LINKED_PAGES = [*PAGES, *sorted((REPO_ROOT / "runbooks").glob("*.md")), REPO_ROOT / "secrets" / "README.md"]
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
MARKER = re.compile(r"^\s*<!-- example: ([\w-]+) -->\s*$")
RUN = "run"
# Why the examples of a tag are not run by this module (each is skipped under its page and line, with this reason).
NOT_RUN = {
    "needs-stack": "needs the running local stack of `make run` (its bot, reconciler and var/stack/ configuration)",
    "needs-services": "needs servers of its own: a paper gateway, a bot, freqtrade, or a database to back up",
    "installs": "installs or deploys on a host: system users, units, polkit rules, containers or secrets",
}
# A line that runs trading-ops: optional VAR=value assignments and sudo (-u USER), then the console script.
COMMAND = re.compile(r"^\s*(?:\$\s+)?(?:\w+=\S+\s+)*(?:sudo\s+(?:-u\s+\S+\s+)?)?(?:\S*/)?trading-ops\s")
SHELL_LANGUAGES = {"", "sh", "bash", "console", "shell"}
EXIT_COMMENT = re.compile(r"#.*\bexits (\d)\b(?:: (.+))?")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`[^`]*`")
SECRETS_MAKE_RUN_WRITES = ("control-token", "reconciler-token", "reconciler-read-token")
TIMEOUT = 120


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    lines: tuple[str, ...]
    tag: str | None

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(REPO_ROOT)}:{self.line}"


def fenced_blocks(page: Path) -> list[Block]:
    """Every fenced code block of a page, with the example marker on the line before it (if any)."""
    lines = page.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, body = opening.group(2), []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j])
            j += 1
        before = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        marker = MARKER.match(before)
        blocks.append(Block(page, i + 1, opening.group(3), tuple(body), marker.group(1) if marker else None))
        i = j + 1
    return blocks


def command_blocks() -> list[Block]:
    return [
        block
        for page in PAGES
        for block in fenced_blocks(page)
        if block.language in SHELL_LANGUAGES and any(COMMAND.match(line) for line in block.lines)
    ]


def prose(page: Path, *, inline_code: bool = False) -> str:
    """A page's text outside fenced blocks, and outside inline code spans unless asked (a link there is no link)."""
    kept, fence = [], None
    for line in page.read_text().splitlines():
        opening = FENCE.match(line)
        if fence is None and opening:
            fence = opening.group(2)
        elif fence is not None and line.strip().startswith(fence):
            fence = None
        elif fence is None:
            kept.append(line if inline_code else INLINE_CODE.sub("", line))
    return "\n".join(kept)


def anchors(page: Path) -> set[str]:
    """The heading anchors of a page, as MkDocs (Python-Markdown's toc) and GitHub spell them."""
    found = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", prose(page, inline_code=True), re.MULTILINE):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").replace("*", "")
        words = re.sub(r"[^\w\s-]", "", text).strip().lower()
        found.add(re.sub(r"[-\s]+", "-", words))  # Python-Markdown
        found.add(re.sub(r"\s", "-", words))  # GitHub
    return found


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_mkdocs_builds_the_site_in_strict_mode(tmp_path: Path) -> None:
    result = mkdocs_build(REPO_ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr
    for page in DOCS.glob("*.md"):
        built = tmp_path / "site" / ("index.html" if page.stem == "index" else f"{page.stem}/index.html")
        assert built.is_file(), page.name


def test_a_broken_link_an_unknown_anchor_or_a_page_left_out_of_nav_fails_the_build(tmp_path: Path) -> None:
    """The strict build is a check that can fail: the site's own configuration rejects each kind of mistake."""
    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copy(REPO_ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    (tmp_path / "docs" / "orphan.md").write_text("# Orphan\n\nIn no nav.\n")
    with (tmp_path / "docs" / "cli.md").open("a") as page:
        page.write("\nSee [nowhere](no-such-page.md) and [the void](reconciler.md#no-such-heading).\n")
    result = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 1
    assert "orphan.md" in result.stderr
    assert "no-such-page.md" in result.stderr
    assert "no-such-heading" in result.stderr


def test_nav_lists_every_page_once() -> None:
    nav = re.findall(r"^\s+- [^:]+: (\S+\.md)$", (REPO_ROOT / "mkdocs.yml").read_text(), re.MULTILINE)
    assert sorted(nav) == sorted(page.name for page in DOCS.glob("*.md"))
    assert len(nav) == len(set(nav))


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda page: str(page.relative_to(REPO_ROOT)))
def test_relative_links_point_at_files_and_headings_that_exist(page: Path) -> None:
    broken = []
    for target in LINK.findall(prose(page)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page.relative_to(REPO_ROOT)}: {broken}"


def test_the_readme_is_a_front_page() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    sections = re.findall(r"^## (.+)$", prose(README, inline_code=True), re.MULTILINE)
    assert sections[:5] == ["The two commands", "What it is", "The picture", "A five-minute tour", "Where to go next"]
    assert "make run  " in "\n".join(text.splitlines()[:20])  # the two commands near the top, not on line 44
    assert "trading-ops --config var/stack/trading-ops.yaml chaos" in text  # the tour injects a fault
    linked = {Path(target.partition("#")[0]).name for target in LINK.findall(prose(README))}
    assert {page.name for page in DOCS.glob("*.md") if page.stem != "index"} <= linked  # every topic is reachable


def test_every_block_of_commands_is_tagged() -> None:
    untagged = [block.name for block in command_blocks() if block.tag is None]
    unknown = [f"{block.name} ({block.tag})" for block in command_blocks() if block.tag not in {RUN, None, *NOT_RUN}]
    assert not untagged, f"blocks of commands without <!-- example: run|{'|'.join(NOT_RUN)} -->: {untagged}"
    assert not unknown, f"unknown example tags: {unknown}"
    assert any(block.tag == RUN for block in command_blocks())


def examples() -> list[object]:
    """One pytest parameter per trading-ops command of a block tagged `run`. The others are not tests at all (a skipped
    test would read as a missing server): their tags say why (NOT_RUN), and test_every_block_of_commands_is_tagged
    holds each block to a known one."""
    params: list[object] = []
    for block in command_blocks():
        for offset, line in enumerate(block.lines, start=block.line + 1):
            if block.tag == RUN and COMMAND.match(line):
                command = line.partition("#")[0].strip()
                params.append(pytest.param(line, id=f"{block.page.relative_to(REPO_ROOT)}:{offset} {command}"))
    return params


def make_checkout(root: Path) -> Path:
    """A checkout as `make run` leaves it in `root`: the repository's files, trading-ops.yaml (the example, copied)
    and the tokens it writes."""
    for entry in REPO_ROOT.iterdir():
        if entry.name not in {"var", "trading-ops.yaml", ".git", ".venv", "site"}:
            (root / entry.name).symlink_to(entry)
    shutil.copy(REPO_ROOT / "trading-ops.example.yaml", root / "trading-ops.yaml")
    (root / "var" / "secrets").mkdir(parents=True, mode=0o700)
    for index, name in enumerate(SECRETS_MAKE_RUN_WRITES):
        secret = root / "var" / "secrets" / name
        secret.write_text(f"docs-example-token-{index}-{'x' * 24}\n")
        secret.chmod(0o600)
    return root


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkout(tmp_path_factory.mktemp("checkout"))


@pytest.mark.parametrize("line", examples())
def test_command_example_runs_as_documented(line: str, checkout: Path) -> None:
    words = shlex.split(line, comments=True)
    assert Path(words[0]).name == "trading-ops", f"only trading-ops commands are run: {line}"
    assert not {"|", ">", "<", "&&", ";", "&"} & set(words), f"a shell line cannot be run as one command: {line}"
    expected = EXIT_COMMENT.search(line)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADING_OPS_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "trading_ops", *words[1:]],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == (int(expected.group(1)) if expected else 0), result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    if expected and expected.group(2):  # `# exits N: what it says`
        assert expected.group(2).strip() in result.stdout + result.stderr
    assert result.stdout.strip() or result.stderr.strip()  # it said something
    if "--help" in words:
        assert result.stdout.startswith("usage: trading-ops"), result.stdout


def test_the_command_line_page_shows_every_commands_help() -> None:
    from trading_ops.cli import build_parser

    commands = next(
        action.choices for action in build_parser()._actions if isinstance(action.choices, dict) and action.choices
    )
    run = {line.strip() for block in command_blocks() if block.tag == RUN for line in block.lines}
    missing = [name for name in commands if f"trading-ops {name} --help" not in run]
    assert not missing, f"docs/cli.md shows no `trading-ops COMMAND --help` for {missing}"
