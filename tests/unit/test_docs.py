"""The docs stay true: their links resolve, their examples run and say what the code answers, and they use no
internal wording.

Conventions the pages follow so these tests can read them:

- a fenced block whose info string carries `file=NAME` (```` ```yaml file=config.yaml ````) is a file of the
  example: the tests write it, under that name, into a directory shared by the page's examples;
- a ```` ```console ```` block holds `$ authz-sidecar ...` commands, each followed by lines of its output (stdout
  and stderr); every documented line must appear in the real output, in order (a `...` line stands for lines left
  out), and `$ echo $?` is followed by the previous command's exit code;
- other ```` ```yaml ```` blocks of docs/envoy.md are fragments of the shipped Envoy configs (a cluster list, a
  listener `transport_socket`), and its ```` ```python ```` block renders a whole config: each is put into the
  shipped file and checked by `envoy --mode validate` (the e2e test at the end).
"""

from __future__ import annotations

import contextlib
import datetime
import io
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.cli import main
from tests.conftest import REPO

DOCS = REPO / "docs"
PAGES = sorted(DOCS.glob("*.md"))
ALL_PAGES = [*PAGES, REPO / "README.md", REPO / "proto" / "README.md"]
EXAMPLE_PAGES = [
    "check.md",
    "envoy.md",
    "configuration.md",
    "sigv4.md",
    "explanations.md",
    "custom-authorizers.md",
    "limits.md",
    "mtls.md",
    "private-apis.md",
    "envoy-config.md",
    "kubernetes.md",
]
"""Pages whose `file=` blocks and console commands are run (each must have at least one command)."""

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)(?P<info>.*)$")
_LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
_CODE_SPAN = re.compile(r"`[^`]*`")
_HEADING = re.compile(r"^(#{1,6})\s+(?P<text>.+?)\s*#*\s*$")


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced code block of a page."""

    info: str
    text: str
    line: int

    @property
    def language(self) -> str:
        return self.info.split()[0] if self.info.split() else ""

    @property
    def file(self) -> str | None:
        for word in self.info.split()[1:]:
            key, _, value = word.partition("=")
            if key == "file" and value:
                return value
        return None


def split_page(text: str) -> tuple[list[str], list[Block]]:
    """The page's prose lines (code blocks blanked out) and its fenced code blocks."""
    prose: list[str] = []
    blocks: list[Block] = []
    fence: re.Match[str] | None = None
    body: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), 1):
        if fence is None:
            opened = _FENCE.match(line)
            if opened:
                fence, body, start = opened, [], number
                prose.append("")
            else:
                prose.append(line)
            continue
        closing = line.strip()
        if closing.startswith(fence["fence"]) and not closing.strip(fence["fence"][0]):
            indent = len(fence["indent"])
            lines = [b[indent:] if not b[:indent].strip() else b for b in body]
            blocks.append(Block(fence["info"].strip(), "\n".join(lines) + "\n" if lines else "", start))
            fence = None
        else:
            body.append(line)
        prose.append("")
    assert fence is None, f"a code block opened on line {start} never closes"
    return prose, blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a page (a repeated heading gets -1, -2, ... as on GitHub)."""
    prose, _ = split_page(page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out: set[str] = set()
    for line in prose:
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match["text"])
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def _without_code_spans(line: str) -> str:
    """The line with its code spans removed (a `[x](y)` there is no link), except as a link's text (`[`x`](y)`)."""

    def keep_in_link_text(match: re.Match[str]) -> str:
        return match[0].strip("`") if line[match.start() - 1 : match.start()] == "[" else ""

    return _CODE_SPAN.sub(keep_in_link_text, line)


def relative_links(page: Path) -> Iterator[tuple[int, str]]:
    """(line number, target) of every link in the page's prose that is not an absolute URL."""
    prose, _ = split_page(page.read_text(encoding="utf-8"))
    for number, line in enumerate(prose, 1):
        for match in _LINK.finditer(_without_code_spans(line)):
            target = match["target"]
            if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target):
                continue
            yield number, target


@pytest.mark.parametrize("page", ALL_PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for number, target in relative_links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{page.name}:{number}: {target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{page.name}:{number}: {target}: no heading #{anchor} in {resolved.name}")
    assert not broken, "\n".join(broken)


def test_the_link_checker_sees_a_broken_link_and_a_missing_anchor(tmp_path: Path) -> None:
    """The checker above must be able to fail: a missing file and a missing anchor are both reported."""
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## The `x` part (y)\n", encoding="utf-8")
    page.write_text(
        "See [a](other.md#the-x-part-y), [b](missing.md), [`c`](other.md#nowhere) and `[d](ignored.md)`.\n"
        "```\n[e](in-code.md)\n```\n",
        encoding="utf-8",
    )
    links = [target for _, target in relative_links(page)]
    assert links == ["other.md#the-x-part-y", "missing.md", "other.md#nowhere"]
    assert anchors(tmp_path / "other.md") == {"other", "the-x-part-y"}


def test_the_readme_links_every_page() -> None:
    linked = {(REPO / target.partition("#")[0]).resolve() for _, target in relative_links(REPO / "README.md") if target}
    missing = [page.name for page in PAGES if page.resolve() not in linked]
    assert not missing, f"README.md's docs list does not link {missing}"


INTERNAL = [
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        r"\blater issues?\b",
        r"\bfoundation\b",
        r"\bthis wave\b",
        r"\bwaves?\b",
        r"\bthis session\b",
        r"\bsessions? \d",
        r"\bissues? #?\d+",
        r"(?<![\w/&])#\d+\b(?!-)",
        r"\breview round\b",
    )
]
"""How the project's own history talks (issues, sessions, waves, the foundation): not for readers. IAM's sessions
(`assumed-role/Role/session`, session tokens) are not matched."""


@pytest.mark.parametrize("page", ALL_PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_internal_wording(page: Path) -> None:
    found = [
        f"{page.name}:{number}: {match[0]!r} in {line.strip()[:100]!r}"
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        for pattern in INTERNAL
        for match in pattern.finditer(line)
    ]
    assert not found, "\n".join(found)


def test_internal_wording_is_recognised_and_iam_sessions_are_not() -> None:
    def flagged(text: str) -> bool:
        return any(pattern.search(text) for pattern in INTERNAL)

    for text in ("the types later issues add", "in the foundation", "measured in session 6", "(issue #19)", "#18"):
        assert flagged(text), text
    for text in ("an assumed-role session", "session_token", "test_foundation_e2e.py", "#behind-load-balancers"):
        assert not flagged(text), text


@dataclass(frozen=True, slots=True)
class Command:
    """One `$ authz-sidecar ...` line of a console block and the output documented under it."""

    argv: list[str]
    expected: list[str]
    exit_code: int | None
    line: int


def commands(blocks: list[Block]) -> list[Command]:
    """The page's documented commands, in order."""
    out: list[Command] = []
    for block in blocks:
        if block.language != "console":
            continue
        argv: list[str] | None = None
        expected: list[str] = []
        exit_code: int | None = None
        lines = block.text.splitlines()
        index = 0
        while index < len(lines):
            line = lines[index]
            if line.startswith("$ echo $?"):
                assert out or argv is not None, f"line {block.line}: `echo $?` before any command"
                exit_code = int(lines[index + 1])
                index += 2
                continue
            if line.startswith("$ "):
                if argv is not None:
                    out.append(Command(argv, expected, exit_code, block.line))
                words = shlex.split(line[2:])
                assert words[0] == "authz-sidecar", f"line {block.line}: only authz-sidecar commands run: {line}"
                argv, expected, exit_code = words[1:], [], None
            else:
                expected.append(line.rstrip())
            index += 1
        if argv is not None:
            out.append(Command(argv, expected, exit_code, block.line))
    return out


def run(argv: list[str]) -> tuple[int, list[str]]:
    """`authz-sidecar ARGV` in this process: its exit code and the lines it printed (stdout, then stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["--log-level", "ERROR", *argv])
    return code, [line.rstrip() for line in (stdout.getvalue() + stderr.getvalue()).splitlines()]


def missing_lines(expected: list[str], actual: list[str]) -> list[str]:
    """Documented lines not found in the output in order (`...` skips any number of lines)."""
    position = 0
    missing = []
    for line in expected:
        if line == "...":
            continue
        try:
            position = actual.index(line, position) + 1
        except ValueError:
            missing.append(line)
    return missing


@pytest.mark.parametrize("name", EXAMPLE_PAGES)
def test_documented_examples_give_the_documented_answers(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, blocks = split_page((DOCS / name).read_text(encoding="utf-8"))
    for block in blocks:
        if block.file is not None:
            target = tmp_path / block.file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(block.text.encode("utf-8"))
    documented = commands(blocks)
    assert documented, f"{name}: no `$ authz-sidecar` example to run"
    monkeypatch.chdir(tmp_path)
    for command in documented:
        code, actual = run(command.argv)
        where = f"{name} (block at line {command.line}): authz-sidecar {shlex.join(command.argv)}"
        missing = missing_lines(command.expected, actual)
        assert not missing, f"{where}\nmissing: {missing}\ngot:\n" + "\n".join(actual)
        if command.exit_code is not None:
            assert code == command.exit_code, f"{where}: exit {code}"
        decision = next((line for line in command.expected if line.startswith("decision:")), "")
        if decision:
            assert code == (0 if "allow" in decision else 1), f"{where}: exit {code} for {decision!r}"


def test_the_example_runner_notices_a_wrong_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A documented outcome the code does not give is reported (the runner above can fail)."""
    (tmp_path / "r.req").write_bytes(b"GET /nowhere HTTP/1.1\nHost: x\n\n")
    monkeypatch.chdir(tmp_path)
    code, actual = run(["check", "--http", "r.req"])
    assert code == 1
    assert missing_lines(["decision:  allow (200)"], actual) == ["decision:  allow (200)"]
    assert missing_lines(["decision:  deny (403)", "...", "route:     (none)"], actual) == []


# --- the Envoy fragments of docs/envoy.md, checked by Envoy itself -------------------------------------------


def _tls_files(directory: Path) -> dict[str, Path]:
    """A self-signed certificate and key standing in for the page's /etc/envoy/tls/ files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    files = {
        "server.crt": pem,
        "clients-ca.crt": pem,
        "server.key": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    }
    for file, data in files.items():
        (directory / file).write_bytes(data)
    return {file: directory / file for file in files}


def envoy_variants(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(what, whole Envoy config) for every Envoy fragment of docs/envoy.md, put into the shipped file it edits."""
    _, blocks = split_page((DOCS / "envoy.md").read_text(encoding="utf-8"))
    shipped = {name: yaml.safe_load((REPO / "deploy" / "envoy" / name).read_text()) for name in SHIPPED_NAMES}
    tls = _tls_files(tmp_path)
    for block in blocks:
        if block.file is not None:
            continue
        if block.language == "python":
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(compile(block.text, "docs/envoy.md", "exec"), {})  # our own documentation
            yield f"python block at line {block.line}", printed.getvalue()
        if block.language != "yaml":
            continue
        text = block.text
        for file, path in tls.items():
            text = text.replace(f"/etc/envoy/tls/{file}", str(path))
        fragment: Any = yaml.safe_load(text)
        if isinstance(fragment, dict) and "transport_socket" in fragment:
            for name, doc in shipped.items():
                edited = yaml.safe_load(yaml.safe_dump(doc))
                edited["static_resources"]["listeners"][0]["filter_chains"][0].update(fragment)
                yield f"yaml block at line {block.line} in {name}", yaml.safe_dump(edited, sort_keys=False)
        elif isinstance(fragment, list) and all(isinstance(c, dict) and "name" in c for c in fragment):
            for name, doc in shipped.items():
                clusters = doc["static_resources"]["clusters"]
                names = {c["name"] for c in clusters}
                if not {c["name"] for c in fragment} <= names:
                    continue
                edited = yaml.safe_load(yaml.safe_dump(doc))
                replacing = {c["name"]: c for c in fragment}
                edited["static_resources"]["clusters"] = [replacing.get(c["name"], c) for c in clusters]
                yield f"yaml block at line {block.line} in {name}", yaml.safe_dump(edited, sort_keys=False)
        else:
            pytest.fail(f"docs/envoy.md line {block.line}: a yaml block that is neither a file= nor an Envoy fragment")


SHIPPED_NAMES = ("envoy.yaml", "envoy-http.yaml")


@pytest.mark.e2e
def test_envoy_fragments_on_the_envoy_page_are_valid_envoy_config(tmp_path: Path) -> None:
    from sidecar.harness.envoy import validate_envoy_config

    variants = list(envoy_variants(tmp_path))
    assert len(variants) >= 4, [what for what, _ in variants]  # TLS in both files, two health checks, the render
    for index, (what, text) in enumerate(variants):
        path = tmp_path / f"envoy-{index}.yaml"
        path.write_text(text, encoding="utf-8")
        result = validate_envoy_config(path)
        assert result.returncode == 0, f"{what}:\n{result.stdout}{result.stderr}"
