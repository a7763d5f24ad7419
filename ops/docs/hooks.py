"""MkDocs hooks (mkdocs.yml `hooks:`): the pages whose content the project itself generates at build time.

- `ops/bench/RESULTS.md`, the file of record for benchmark figures, becomes the page `benchmarks/results.md`, with
  every PNG under ops/bench/ at the same relative path, so the plots it links resolve unchanged (headings get the
  blank line before them that Python-Markdown needs and GitHub does not).
- `<!-- generated: settings -->` in a page becomes the settings table of `worker/contract/settings.py`.
- `<!-- generated: http-api -->` becomes the gateway's HTTP API, rendered from the OpenAPI document of the FastAPI
  app itself (`producer.gateway.app.create_app`) as markdown tables; the document is also published as
  `reference/openapi.json`. Nothing is loaded from outside: no swagger/redoc script, no CDN.
- The screenshots under `docs/images/` are replaced by the browser tests' fresh ones (test-artifacts/, gitignored)
  when a test run left them, so a local build shows the pages as they look now; a clean clone shows the committed
  copies.
- The command-line page (mkdocs-click) shows no default where click has none.
"""

from __future__ import annotations

import json
import re
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "ops" / "bench"
RESULTS_PAGE = "benchmarks/results.md"
OPENAPI_FILE = "reference/openapi.json"
ARTIFACTS = REPO / "test-artifacts"
# docs/ image -> the test artifact it is a copy of (tests/test_viewer.py, tests/test_gateway.py)
SCREENSHOTS = {
    "images/viewer.png": ARTIFACTS / "viewer" / "04b-orthogonal.png",
    "images/jobs-page.png": ARTIFACTS / "gateway" / "jobs-page.png",
}
MARKERS = {
    "<!-- generated: settings -->": lambda: _settings_table(),
    "<!-- generated: http-api -->": lambda: render_openapi(gateway_openapi()),
}


def on_files(files: Files, config: Any) -> Files:
    record = _headings_stand_alone((BENCH / "RESULTS.md").read_text())
    files.append(File.generated(config, RESULTS_PAGE, content=record))
    for png in sorted(BENCH.rglob("*.png")):
        files.append(File.generated(config, f"benchmarks/{png.relative_to(BENCH).as_posix()}", abs_src_path=str(png)))
    files.append(File.generated(config, OPENAPI_FILE, content=json.dumps(gateway_openapi(), indent=2) + "\n"))
    for uri, artifact in SCREENSHOTS.items():
        committed = files.get_file_from_path(uri)
        if committed is not None and artifact.is_file():
            files.remove(committed)
            files.append(File.generated(config, uri, abs_src_path=str(artifact)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    for marker, make in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    # mkdocs-click 0.9 prints click 8.3's "no default" sentinel as a default; an empty cell says it
    return html.replace("<td><code>Sentinel.UNSET</code></td>", "<td></td>")


def _headings_stand_alone(markdown: str) -> str:
    """A blank line before every heading outside code blocks: GitHub (CommonMark) ends a list at a heading line,
    Python-Markdown would read it as the list item's text; the file of record itself is left as it is."""
    out: list[str] = []
    fenced = False
    for line in markdown.split("\n"):
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and re.match(r"#{1,6} ", line) and out and out[-1].strip():
            out.append("")
        out.append(line)
    return "\n".join(out)


def _settings_table() -> str:
    from worker.contract.settings import settings_table

    return settings_table()


@cache
def gateway_openapi() -> dict[str, Any]:
    """The service's own OpenAPI document, as `GET /openapi.json` answers it on a site with no DICOMweb roots
    configured (a running service lists its allowed roots as enums). The app is built, never started."""
    from producer.gateway.app import create_app
    from producer.gateway.config import GatewayConfig
    from producer.gateway.identity import Identity

    with tempfile.TemporaryDirectory() as data_dir:
        app = create_app(GatewayConfig(tokens={"d" * 32: Identity("docs")}, data_dir=Path(data_dir)))
        return app.openapi()


# ---------------------------------------------------------------- OpenAPI -> markdown

_SCHEMAS: frozenset[str] = frozenset()  # the component schemas of the document being rendered


def render_openapi(schema: dict[str, Any]) -> str:
    global _SCHEMAS
    _SCHEMAS = frozenset(schema.get("components", {}).get("schemas", {}))
    out: list[str] = []
    info = schema.get("info", {})
    out.append(f"OpenAPI {schema.get('openapi', '')}, *{info.get('title', '')}* {info.get('version', '')}. ")
    out.append(_text(info.get("description", "")) + "\n")
    for name, scheme in schema.get("components", {}).get("securitySchemes", {}).items():
        out.append(f"Security scheme `{name}`: {scheme.get('type')} {scheme.get('scheme', '')}. ")
        out.append(_text(scheme.get("description", "")) + "\n")
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            tag = (operation.get("tags") or ["service"])[0]
            by_tag.setdefault(tag, []).append((method, path, operation))
    for tag, operations in by_tag.items():
        out.append(f"## {tag}\n")
        for method, path, operation in operations:
            out.extend(_operation(method, path, operation))
    out.append("## Schemas\n")
    for name, body in schema.get("components", {}).get("schemas", {}).items():
        out.extend(_schema_section(name, body))
    return "\n".join(out)


def _operation(method: str, path: str, operation: dict[str, Any]) -> list[str]:
    out = [f"### `{method.upper()} {path}`\n", _text(operation.get("summary", "")) + "\n"]
    if operation.get("description"):
        out.append(_text(operation["description"]) + "\n")
    out.append(
        "Credential: " + ("bearer (`Authorization: Bearer ...`)" if operation.get("security") else "none") + ".\n"
    )
    parameters = operation.get("parameters", [])
    if parameters:
        out.append("| parameter | in | required | type | description |\n| --- | --- | --- | --- | --- |")
        for parameter in parameters:
            schema = parameter.get("schema", {})
            description = parameter.get("description") or schema.get("description", "")
            out.append(
                f"| `{parameter['name']}` | {parameter.get('in', '')} | {'yes' if parameter.get('required') else 'no'} "
                f"| {_type(schema)} | {_cell(description)} |"
            )
        out.append("")
    body = operation.get("requestBody")
    if body:
        out.append("| request body | schema |\n| --- | --- |")
        for media, content in body.get("content", {}).items():
            out.append(f"| `{media}` | {_body(content.get('schema', {}))} |")
        out.append("")
    out.append("| status | meaning | content |\n| --- | --- | --- |")
    for status, response in operation.get("responses", {}).items():
        contents = ", ".join(
            f"`{media}`" + (f" {_type(c['schema'])}" if c.get("schema") else "")
            for media, c in response.get("content", {}).items()
        )
        out.append(f"| {status} | {_cell(response.get('description', ''))} | {contents} |")
    out.append("")
    return out


def _body(schema: dict[str, Any]) -> str:
    if "$ref" in schema or schema.get("type") != "object":
        return _type(schema)
    fields = []
    for name, prop in schema.get("properties", {}).items():
        required = " (required)" if name in schema.get("required", []) else ""
        fields.append(f"`{name}`{required}: {_type(prop)}")
    return "; ".join(fields)


def _schema_section(name: str, schema: dict[str, Any]) -> list[str]:
    out = [f"### {name} {{#schema-{name.lower()}}}\n"]
    if schema.get("description"):
        out.append(_text(schema["description"]) + "\n")
    properties = schema.get("properties")
    if properties:
        out.append("| field | type | required | description |\n| --- | --- | --- | --- |")
        for field, prop in properties.items():
            required = "yes" if field in schema.get("required", []) else "no"
            out.append(f"| `{field}` | {_type(prop)} | {required} | {_cell(prop.get('description', ''))} |")
        out.append("")
    else:
        out.append(f"Type: {_type(schema)}.\n")
    text = json.dumps(schema, indent=2, ensure_ascii=False)
    out.append(f'??? note "{name} as JSON schema"\n\n    ```json\n' + _indent(text) + "\n    ```\n")
    return out


def _type(schema: dict[str, Any]) -> str:
    if not schema:
        return "any"
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name not in _SCHEMAS:  # a reference the document does not resolve: said, not linked
            return f"`{name}` (not defined in the document)"
        return f"[{name}](#schema-{name.lower()})"
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in schema:
            kinds = [_type(option) for option in schema[combinator]]
            return (" and " if combinator == "allOf" else " or ").join(dict.fromkeys(kinds))
    kind = schema.get("type", "any")
    if kind == "array":
        text = f"array of {_type(schema.get('items', {}))}"
        low, high = schema.get("minItems"), schema.get("maxItems")
        if low is not None or high is not None:
            text += f" ({low if low is not None else 0}..{high if high is not None else 'n'} items)"
    else:
        text = str(kind)
        if schema.get("format"):
            text += f" ({schema['format']})"
    if "enum" in schema:
        text += ": " + ", ".join("null" if value is None else f"`{value}`" for value in schema["enum"])
    if schema.get("nullable"):
        text += " or null"
    if "default" in schema:
        text += f", default `{json.dumps(schema['default'])}`"
    return text


def _text(text: str) -> str:
    return " ".join(str(text).split())


def _cell(text: str) -> str:
    return _text(text).replace("|", "\\|")


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" if line else "" for line in text.splitlines())
