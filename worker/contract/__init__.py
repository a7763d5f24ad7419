"""The contract between producer and worker: what both sides import, and nothing heavy (standard library here)."""
