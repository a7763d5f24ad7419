"""The contract between producer and worker: what both sides import, and nothing heavy.

Importable with numpy and pydantic alone (no Celery, OpenVINO, pydicom or redis at import time), so the producer,
the gateway and the worker share one definition of the study, the messages, the keys, the engine identity, the
settings and the decisions both sides need (is a study 3D, how many views a route runs, a study's time budget).
"""
