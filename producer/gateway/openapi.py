"""The service's OpenAPI document (3.0.3: the swagger-ui of swagger-ui-bundle renders 3.0, not 3.1).

FastAPI derives the routes; this adds what FastAPI cannot see: the JSON bodies of a job and of a session (those
routes also take multipart, so they parse the body themselves), the prompts schema, and the DICOMweb roots this site
allows, as enums: a generated client learns which roots will be accepted instead of finding out by a 422."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from producer.gateway.routes.sessions import SessionRequest
from producer.gateway.schemas import PROMPTS_SCHEMA, JobRequest


def install_schema(app: FastAPI, allowed_roots: frozenset[str]) -> None:
    roots = sorted(allowed_roots)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                openapi_version="3.0.3",
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            models = JobRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(models.pop("$defs", {}))
            components["JobRequest"] = models
            session = SessionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(session.pop("$defs", {}))
            components["SessionRequest"] = session
            components["Prompts"] = PROMPTS_SCHEMA
            models["properties"]["prompts"] = {"$ref": "#/components/schemas/Prompts"}
            store_description = models["properties"]["store"].get("description", "")
            models["properties"]["store"] = {
                "type": "string",
                "nullable": True,
                "enum": ["source", *roots, None],
                "default": "source",
                "description": store_description,
            }
            components["UploadStore"] = {
                "type": "string",
                "description": "a configured DICOMweb root to STOW the SEG to (DICOM uploads only)",
            }
            if roots:  # none configured: no DICOMweb source or destination can be accepted at all
                components["DicomwebSource"]["properties"]["dicomweb"]["enum"] = roots
                components["UploadStore"]["enum"] = roots
                components["SeriesRef"]["properties"]["root"]["enum"] = roots
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
