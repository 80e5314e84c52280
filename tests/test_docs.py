"""The documentation: the recipe reference lists every schema field, every relative link resolves (files, and headings
for #anchors, with GitHub's slugs), and the README stays a front door (under 15 KB, linking every docs page)."""
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from vitdeploy.compression.recipe import schema_rows

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC_FILES = [README, ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:|^//")


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: link text kept, markup and punctuation dropped, lower case, spaces → '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, duplicates numbered -1, -2, … as GitHub does."""
    seen: dict[str, int] = {}
    out = set()
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        m = _HEADING.match(line)
        if not m:
            continue
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def relative_links(path: Path) -> list[str]:
    """Link targets in the prose of a Markdown file (code spans and blocks left out), external URLs skipped."""
    prose = "\n".join(_prose_lines(path.read_text(encoding="utf-8")))
    prose = re.sub(r"`[^`]*`", "", prose)  # code spans, which may run over a line break
    targets = _INLINE_LINK.findall(prose) + _REF_DEF.findall(prose)
    return [t for t in targets if not _SCHEME.match(t)]


def test_recipe_reference_lists_every_schema_field():
    reference = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    missing = [k for k, _, _ in schema_rows() if f"| `{k}` |" not in reference]
    assert not missing, f"docs/reference.md's recipe table lacks {missing}"


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    broken = []
    for target in relative_links(doc):
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / unquote(file_part)).resolve() if file_part else doc
        if ROOT not in (dest, *dest.parents) or not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and unquote(anchor).lower() not in anchors(dest):
            broken.append(f"{target} (no heading with that anchor in {dest.relative_to(ROOT)})")
    assert not broken, f"{doc.relative_to(ROOT)} has broken links: {broken}"


def test_slugs_follow_github():
    assert github_slug("Long runs: resuming and multi-GPU") == "long-runs-resuming-and-multi-gpu"
    assert github_slug("The demo (`make demo`)") == "the-demo-make-demo"
    assert github_slug("MCF: FFN compression from the class token's contributions") == \
        "mcf-ffn-compression-from-the-class-tokens-contributions"
    assert github_slug("On a Jetson: `profiling/profile_engine.py`") == "on-a-jetson-profilingprofile_enginepy"


def test_link_checker_catches_broken_links(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Top\n\n## A b\n\n[ok](#a-b) [bad](#nope) [gone](missing.md) [web](https://example.org)\n"
                    "`[code](not-a-link.md)`\n\n```\n[fenced](not-a-link.md)\n# not a heading\n```\n")
    assert relative_links(page) == ["#a-b", "#nope", "missing.md"]
    assert anchors(page) == {"top", "a-b"}


def test_readme_is_a_front_door():
    size = README.stat().st_size
    assert size < 15360, f"README.md is {size} bytes; keep it under 15 KB and move detail into docs/"
    text = README.read_text(encoding="utf-8")
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in relative_links(README)}
    unlinked = [p.name for p in DOC_FILES[1:] if p.resolve() not in linked]
    assert not unlinked, f"README.md does not link {unlinked}"
    assert "\n<!-- python-example -->\n" in text
