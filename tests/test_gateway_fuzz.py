"""The gateway's API fuzzed against its own OpenAPI document: schemathesis (the CLI from PyPI) with every check
(server errors, undocumented status codes and content types, response schemas, schema-valid requests rejected and
schema-violating ones accepted, auth ignored, Allow headers, created resources missing...), every route, with an
admin's credential and with none. Bounded here (a fixed seed, 25 examples an operation: under a minute on 2 cores);
ops/bench/gateway_fuzz.py runs longer with fresh seeds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway_support import ADMIN, ServedApp, bearer, fuzz_app

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CONFIG = Path(__file__).with_name("schemathesis.toml")  # what the defaults cannot know (said there)
pytestmark = pytest.mark.skipif(not SCHEMATHESIS.is_file(), reason="schemathesis is not installed (the test extra)")


def schemathesis_run(url: str, folder: Path, headers: dict[str, str], examples: int, seed: int | None) -> str:
    command = [str(SCHEMATHESIS), "--config-file", str(CONFIG), "run", f"{url}/openapi.json", "--checks", "all"]
    command += ["--workers", "1"]
    command += ["--max-examples", str(examples), "--no-shrink", "--report", "junit", "--report-dir", str(folder)]
    command += ["--seed", str(seed)] if seed is not None else []
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=folder)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    return result.stdout


@pytest.mark.parametrize("who", ["admin", "no credential"])
def test_openapi_fuzz_all_checks(tmp_path: Path, who: str):
    headers = bearer(ADMIN) if who == "admin" else {}
    with ServedApp(fuzz_app(tmp_path / "data")) as served:
        said = schemathesis_run(served.url, tmp_path, headers, examples=25, seed=24)
    assert "Tested: 21" in said and " passed" in said, said[-3000:]


def _refs(node) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(value) for value in node))
    return set()


def test_every_reference_of_the_openapi_document_resolves(tmp_path: Path):
    """A $ref to a schema the document does not define is invisible to a fuzzer (it generates nothing for it) and
    breaks generated clients: every reference names a component, and the session body lists the allowed roots."""
    document = fuzz_app(tmp_path / "data").openapi()
    schemas = document["components"]["schemas"]
    refs = _refs(document)
    assert "#/components/schemas/SessionRequest" in refs and "#/components/schemas/JobRequest" in refs
    missing = sorted(ref for ref in refs if ref.removeprefix("#/components/schemas/") not in schemas)
    assert not missing, missing
    assert schemas["SeriesRef"]["properties"]["root"]["enum"], schemas["SeriesRef"]
