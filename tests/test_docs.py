"""The documentation site (mkdocs.yml, docs/, ops/docs/hooks.py): it builds with --strict (no broken link, page or
reference), it loads nothing from another host when served offline, and its generated pages hold what they are
generated from (the settings table, the gateway's OpenAPI, the click commands, ops/bench/RESULTS.md). The build
takes a few seconds; it is skipped with the reason where the docs extra is not installed."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS_TOOLS = ("mkdocs", "material", "mkdocs_click", "mkdocstrings", "mkdocstrings_handlers.python")
EXTERNAL = re.compile(r"^\s*(https?:)?//", re.IGNORECASE)


def _missing_tools() -> list[str]:
    missing = []
    for module in DOCS_TOOLS:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(module)
    return missing


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    missing = _missing_tools()
    if missing:
        pytest.skip(f"the docs extra is not installed ({', '.join(missing)}): pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return out


class _Loads(HTMLParser):
    """What a page makes the browser fetch by itself: script/img/iframe/source src, link href (styles, icons,
    preloads, manifests); plain <a> links are followed only when clicked and are not counted."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "img": "src", "iframe": "src", "source": "src", "link": "href"}.get(tag)
        for name, value in attrs:
            if value and (name == wanted or (tag == "img" and name == "srcset")):
                self.urls.append(value)


def test_the_site_loads_nothing_from_another_host(site):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 30, [p.name for p in pages]
    outside = {}
    for page in pages:
        parser = _Loads()
        parser.feed(page.read_text())
        assert parser.urls, f"{page} loads no script or style at all: not a Material page"
        if hits := [url for url in parser.urls if EXTERNAL.match(url)]:
            outside[str(page.relative_to(site))] = hits
    assert not outside, outside
    for asset in [*site.rglob("*.css"), *site.rglob("*.js")]:
        text = asset.read_text(errors="replace")
        assert "fonts.googleapis" not in text and "fonts.gstatic" not in text, asset
        assert not re.search(r"""url\(\s*["']?(https?:)?//""", text), f"{asset} loads a URL from another host"
    assert (site / "search" / "search_index.json").is_file()  # the search runs on the built-in index


def test_the_generated_pages_hold_what_they_are_generated_from(site):
    from worker.contract.settings import Environment

    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "ops" / "docs" / "hooks.py")
    assert spec and spec.loader
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)

    settings = (site / "operations" / "settings.html").read_text()
    for name in Environment.model_fields:
        assert f"LITEMEDSAM_{name.upper()}" in settings, name
    api = (site / "user-guide" / "http-api.html").read_text()
    for path, operations in hooks.gateway_openapi()["paths"].items():
        for method in operations:
            assert f"{method.upper()} {path}" in api, (method, path)
    assert (site / "reference" / "openapi.json").is_file()
    cli = (site / "user-guide" / "cli.html").read_text()
    for command in ("producer submit", "producer results", "producer serve", "worker start", "worker calibrate"):
        assert command in cli, command
    assert "--dicomweb-credentials" in cli and "Sentinel" not in cli
    results = (site / "benchmarks" / "results.html").read_text()
    record = (REPO / "ops" / "bench" / "RESULTS.md").read_text()
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", record):
        assert (site / "benchmarks" / image).is_file(), image
        assert f'src="{image}"' in results, image
    assert results.count("<h2") >= record.count("\n## ")
    contract = (site / "reference" / "contract.html").read_text()
    assert "worker.contract.prompts" in contract and "TaskMessage" in contract


def test_the_settings_page_is_generated_not_pasted():
    page = (REPO / "docs" / "operations" / "settings.md").read_text()
    assert "<!-- generated: settings -->" in page and "| `LITEMEDSAM_" not in page


def test_the_readme_starts_with_the_two_commands_and_stays_short():
    text = README.read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.DOTALL)
    assert block and text.index("```bash") < 400, "the set-up commands come first"
    commands = [line.split("  #")[0].strip() for line in block.group(1).splitlines()]
    assert commands == [
        "ops/setup.sh && .venv/bin/producer demo --out demo-results",
        "ops/setup.sh && .venv/bin/python -m pytest -q",
    ]
    assert len(text.splitlines()) < 150
    for target in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (REPO / target).is_file(), target
