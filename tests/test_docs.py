"""The documentation site (docs/, mkdocs.yml) builds with no broken link, no missing snippet and no
page left out of its navigation; the README stays an entrance, not a manual."""
import subprocess
import sys
from pathlib import Path

import yaml

from cambrian.config import ColonyConfig

REPO = Path(__file__).resolve().parents[1]


def _pages(nav) -> set[str]:
    items = nav if isinstance(nav, list) else [nav]
    return {p for item in items for v in item.values() for p in ([v] if isinstance(v, str) else _pages(v))}


def test_the_docs_site_builds_strict_and_every_page_is_in_its_navigation(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    assert _pages(nav) == {p.name for p in (REPO / "docs").glob("*.md")}
    # The params reference carries each key's explanation as cambrian/config.py writes it.
    assert ColonyConfig.model_fields["population"].description in (tmp_path / "site" / "params" / "index.html").read_text()


def test_the_readme_is_short_and_links_only_to_pages_that_exist():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for link in (part.split(")")[0] for part in readme.split("](")[1:]):
        assert (REPO / link).is_file(), link
