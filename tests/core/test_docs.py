"""The docs stay true to the code and to each other: the configuration page is the one the script generates,
and every relative link in the README and docs/ leads to a file (and heading) that exists."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "benchmarks" / "results").glob("*.md"))]

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HTML_SRC = re.compile(r"""<(?:img|a)\b[^>]*?\b(?:src|href)=["']([^"']+)["']""")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def _generator():
    spec = importlib.util.spec_from_file_location("gen_config_docs", ROOT / "scripts" / "gen_config_docs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_page_is_generated_from_the_code() -> None:
    gen = _generator()
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == gen.render(), (
        "docs/configuration.md differs from what scripts/gen_config_docs.py generates from the code: "
        f"run `{gen.COMMAND}` (python scripts/gen_config_docs.py) and commit the page"
    )


def test_configuration_page_names_every_setting_and_option() -> None:
    from saft_core.config import DataConfig, FullConfig, SaftConfig, TrainConfig
    from saft_service.settings import Settings

    page = _generator().render()
    for name in Settings.model_fields:
        assert f"`SAFT_{name.upper()}`" in page, name
    assert "`--lr`" in page and "`--score-reduction`" in page
    assert "`learning_rate`" in page and "`validation_fraction`" in page
    for cls in (TrainConfig, SaftConfig, FullConfig, DataConfig):  # the walk over FinetuneConfig reaches each one
        assert f"### {cls.__name__} (" in page, cls.__name__


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"<[^>]+>", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    seen: dict[str, int] = {}
    out = set()
    for line in text.splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            out.add(base if n == 0 else f"{base}-{n}")
            seen[base] = n + 1
    return out


def links(path: Path) -> list[str]:
    text = CODE_SPAN.sub("", FENCE.sub("", path.read_text()))
    return LINK.findall(text) + HTML_SRC.findall(text)


def test_slug_matches_github() -> None:
    assert slug("Alpha: the frontier and the recommended alpha") == "alpha-the-frontier-and-the-recommended-alpha"
    assert slug("Job spec (POST /v1/jobs)") == "job-spec-post-v1jobs"
    assert slug("Quickstart: the Python client and the `saft` remote commands") == (
        "quickstart-the-python-client-and-the-saft-remote-commands"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target}: no heading #{fragment} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)} has broken links:\n" + "\n".join(broken)


def test_link_check_sees_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Here\n[ok](#here) [gone](missing.md) `[code](nope.md)`\n```\n[in code](nope.md)\n```\n")
    assert links(page) == ["#here", "missing.md"]
    assert anchors(page) == {"here"}
