"""The hospital gateway: `producer serve`, an HTTP service between a PACS (DICOMweb) and the segmentation engine.

- dicomweb: one DICOMweb server (QIDO-RS, WADO-RS, STOW-RS) with the site's credentials, timeouts, bounded retries;
  errors name the server without credentials.
- config: the service's settings (API tokens, DICOMweb credentials, data folder).
- jobs: job records (state, progress, metrics, where the SEG was stored) kept as JSON files in the data folder.
- segmenters: who segments a loaded study: the engine in this process, or the fleet through producer.api.
- pipeline: one job from source to stored SEG (fetch or upload -> discovery -> study -> masks -> outputs -> STOW).
- queue: runs jobs in background threads (one at a time embedded) and re-queues unfinished jobs on start.
- app: the FastAPI routes; page: the jobs page for people; cli: `producer serve`.
"""
