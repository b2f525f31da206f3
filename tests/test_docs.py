"""Every relative link in the README, the docs and the notebooks' text resolves: the file exists
and, where a link names an anchor (``docs/results.md#where-the-remaining-errors-lie``), a heading
of that file gives it (GitHub's rule: lower case, punctuation dropped, spaces to hyphens)."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(?P<title>.+?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def slug(title: str) -> str:
    """GitHub's anchor of a heading."""
    title = LINK.sub(lambda m: m["text"], title)  # a link's text, not its target
    title = re.sub(r"<[^>]+>", "", title).strip().lower()
    title = re.sub(r"[^\w\- ]", "", title)  # \w keeps letters, digits, _
    return title.replace(" ", "-")


def _prose(text: str) -> list[str]:
    """The lines of a markdown text outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors(path: Path) -> set[str]:
    found, seen = set(), {}
    for line in _prose(path.read_text(encoding="utf-8")):
        if m := HEADING.match(line):
            base = slug(m["title"])
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def _documents() -> list[tuple[Path, str]]:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    out = [(p, p.read_text(encoding="utf-8")) for p in docs]
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        out.append(
            (nb, "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown"))
        )
    return out


def _links() -> list[tuple[str, Path, str]]:
    found = []
    for path, text in _documents():
        for line in _prose(text):
            for m in LINK.finditer(re.sub(r"`[^`]*`", "", line)):
                target = m["target"]
                if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, mailto:, ...
                    found.append((f"{path.relative_to(ROOT)} -> {target}", path, target))
    return found


def test_the_docs_exist_and_are_linked_from_the_readme():
    docs = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert docs, "docs/ holds no markdown file"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    unlinked = [d for d in docs if f"docs/{d}" not in readme]
    assert not unlinked, f"not linked from the README: {unlinked}"
    assert len(readme.splitlines()) <= 250, (
        "the README is meant to stay short: move detail to docs/"
    )


@pytest.mark.parametrize(
    "name, source, target", _links(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_a_relative_link_resolves(name, source, target):
    file, _, anchor = target.partition("#")
    path = (source.parent / file).resolve() if file else source
    assert path.exists(), f"{name}: {path} does not exist"
    if anchor and path.suffix == ".md":
        assert anchor in anchors(path), f"{name}: no heading of {path.name} gives #{anchor}"
