"""The documentation: README.md and docs/ built by MkDocs in strict mode, their relative links, and their examples run.

A fenced block of commands carries a marker comment on the line before it: `<!-- example: run -->` (every command
in it runs here, through the console script's module, and exits 0, or as its comment `# exits N: what it says` says)
or `<!-- example: TAG -->` with a TAG of NOT_RUN, which says why it cannot run in a test (it is skipped by name, with
that reason). A block of commands without a marker fails the tests.

`<!-- example: bot -->` marks the three blocks of the bot a newcomer writes ("Writing a bot"): its Python file, its
configuration and the commands that run it. test_the_bot_example_runs_as_documented writes the first two to files
and runs the third in that directory.
"""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from make_run_checkout import make_checkout
from ports import free_port
from system_binaries import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
# Pages whose relative links are checked too: the runbooks link into docs/ (and an alert's runbook_url names them).
LINKED_PAGES = [*PAGES, *sorted((REPO_ROOT / "runbooks").glob("*.md")), REPO_ROOT / "secrets" / "README.md"]
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
MARKER = re.compile(r"^\s*<!-- example: ([\w-]+) -->\s*$")
RUN = "run"
BOT = "bot"  # the blocks of the bot example (test_the_bot_example_runs_as_documented)
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
    unknown = [
        f"{block.name} ({block.tag})" for block in command_blocks() if block.tag not in {RUN, BOT, None, *NOT_RUN}
    ]
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


# A log line as the runtime's default logging writes it: time, level, logger, message.
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) [\w.]+: ")
BOT_DEADLINE_SECONDS = 60.0  # to start and trade; a deadline, not a measurement


def bot_example() -> tuple[Block, Block, Block]:
    """The bot example's Python file, configuration and commands (the blocks marked `bot`)."""
    blocks = [block for page in PAGES for block in fenced_blocks(page) if block.tag == BOT]
    by_language = {block.language: block for block in blocks}
    assert len(blocks) == 3 and sorted(by_language) == ["python", "sh", "yaml"], [b.name for b in blocks]
    return by_language["python"], by_language["yaml"], by_language["sh"]


def fills(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = [line for line in text.splitlines() if line.startswith("tradingbot_fills_total{")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in samples)


def test_the_bot_example_runs_as_documented(tmp_path: Path) -> None:
    """The bot of "Writing a bot" as a newcomer runs it: the file and the configuration as the page shows them (the
    bot's port made a free one), the page's commands run in that directory. Started before `db upgrade`, the bot
    stops at once with one line saying to run it; after it, the bot trades on its simulated venue (fills in its
    /metrics), logs with time and level, and stops cleanly on SIGTERM."""
    python, config, commands = bot_example()
    lines = [line.strip() for line in commands.lines if line.strip()]
    start = next(line for line in lines if line.startswith("python "))
    _, script, config_name = shlex.split(start)
    (tmp_path / script).write_text("\n".join(python.lines) + "\n")
    settings = yaml.safe_load("\n".join(config.lines))
    port = free_port()
    settings["bot"]["listen"]["port"] = port
    (tmp_path / config_name).write_text(yaml.safe_dump(settings))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADING_OPS_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    bot = [sys.executable, script, config_name]

    def run(args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False)

    for line in lines[: lines.index(start)]:
        if COMMAND.match(line):  # before the first trading-ops command (db upgrade): the bot cannot start yet
            early = run(bot)
            assert early.returncode == 2, early.stderr
            assert early.stderr.splitlines() == [
                f"{script}: config: database.url: database is not migrated: run `trading-ops db upgrade`"
            ]
            result = run([sys.executable, "-m", "trading_ops", *shlex.split(line, comments=True)[1:]])
        else:
            result = run(["bash", "-c", line])
        assert result.returncode == 0, f"{line}: {result.stdout}{result.stderr}"

    log = tmp_path / "bot.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(bot, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + BOT_DEADLINE_SECONDS
        traded = 0.0
        while traded <= 0:
            assert proc.poll() is None, f"the bot exited with {proc.returncode}: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"no fill within {BOT_DEADLINE_SECONDS:g} s: {log.read_text()[-2000:]}"
            try:
                traded = fills(port)
            except OSError:
                pass  # not listening yet
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "Traceback" not in text
    assert any(LOG_LINE.match(line) and "trading BTC-USD on paper" in line for line in text.splitlines()), text


def test_the_writing_a_bot_table_names_every_export_with_the_module_it_lives_in() -> None:
    """`from trading_ops.bot import NAME` for every name of __all__, each in the table of docs/library.md's "Writing a
    bot" beside the module that defines it: a newcomer finds every name, and where to read it."""
    from trading_ops import bot

    page = (DOCS / "library.md").read_text()
    section = page.split("\n## Writing a bot\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for names, modules in re.findall(r"^\| ((?:`\w+`(?:, )?)+) \| ((?:`[\w.]+`(?:, )?)+) \|", section, re.MULTILINE):
        for name in re.findall(r"`(\w+)`", names):
            rows[name] = set(re.findall(r"`([\w.]+)`", modules))
    assert sorted(rows) == sorted(bot.__all__)
    for name in bot.__all__:
        assert getattr(bot, name).__module__ in rows[name], name
    assert set(bot.__all__) <= set(dir(bot))  # what an editor completes
