"""The documentation site (mkdocs.yml, docs/) builds with ``mkdocs build --strict``: every page
of the nav exists, every docs page is in the nav, and every link between pages and every
``#anchor`` resolves. mkdocs-material comes with the ``dev`` extras."""
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    """``mkdocs build --strict`` of ``config`` into ``site`` with this interpreter's mkdocs."""
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.fail("mkdocs-material is not installed in this environment (expected the dev extras: "
                    "pip install -e '.[dev]')")
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def test_docs_build_strict(tmp_path: Path) -> None:
    result = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    built = {p.parent.name for p in (tmp_path / "site").glob("*/index.html")}
    pages = {p.stem for p in (ROOT / "docs").glob("*.md")} - {"index"}
    assert pages <= built, f"pages not built: {sorted(pages - built)}"


def test_link_to_missing_page_fails_the_build(tmp_path: Path) -> None:
    """The strict build is what catches a broken link: the same docs with one link to a page
    that does not exist must not build."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    page = tmp_path / "docs" / "index.md"
    page.write_text(page.read_text() + "\nSee [a page that does not exist](no-such-page.md).\n")
    result = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0, "a link to a missing page built without error"
    assert "no-such-page.md" in result.stdout + result.stderr


def test_readme_links_point_at_files_that_exist():
    # mkdocs checks docs/; the READMEs outside it are checked here
    import re

    root = Path(__file__).resolve().parents[1]
    for readme in (root / "README.md", root / "results/README.md"):
        links = re.findall(r"\]\(([^)#\s]+)", readme.read_text())
        assert links, readme
        missing = [link for link in links if "://" not in link and not (readme.parent / link).exists()]
        assert missing == [], f"{readme}: links to missing files"


def test_readme_headline_is_the_published_folders():
    """The README's headline table is the one `tood-ablate publish --readme` wrote from the folder
    its marker names: editing either alone fails here."""
    from reports.publish import HEADLINE_BEGIN, HEADLINE_END

    lines = (ROOT / "README.md").read_text().splitlines(keepends=True)
    (begin,) = [i for i, line in enumerate(lines) if line.startswith("<!-- headline from ")]
    end = lines.index(HEADLINE_END + "\n")
    folder = lines[begin].removeprefix("<!-- headline from ").split(":", 1)[0]
    assert lines[begin] == HEADLINE_BEGIN.format(folder=folder) + "\n"
    published = (ROOT / folder / "summary_headline.md").read_text()
    assert "".join(lines[begin + 1:end]) == "\n" + published + "\n"
