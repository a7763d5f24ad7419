"""The hospital gateway: `producer serve`, an HTTP service between a PACS (DICOMweb) and the segmentation engine.

- dicomweb: one DICOMweb server (QIDO-RS, WADO-RS, STOW-RS) with the site's credentials, timeouts, bounded retries,
  no redirects; the site's allowed roots (ServerDirectory); errors name the server without credentials.
- identity: who calls (named tokens with scopes, OpenID Connect JWTs); access: scopes and ownership of resources;
  limits: per-identity request rate and unfinished resources; caller: the FastAPI dependency applying all three.
- audit: the append-only audit trail; retention: purging old job data; middleware: audit line and security
  headers on every request.
- config: the service's settings; service: its parts wired once.
- jobs: job records (owner, state, progress, metrics, where the SEG was stored) as JSON files in the data folder.
- segmenters: who segments a loaded study: the engine in this process, or the fleet through producer.api.
- pipeline: one job from source to stored SEG (fetch or upload -> discovery -> study -> masks -> outputs -> STOW).
- queue: runs jobs in background threads (one at a time embedded) and re-queues unfinished jobs on start.
- schemas and openapi: the API's bodies and its OpenAPI document; routes: one APIRouter per resource (jobs, audit,
  the service, the pages); app: builds the FastAPI app; page: the jobs page for people; cli: `producer serve`.
"""
