"""The phantoms as challenge npz cases: defined in worker.evaluation.phantom_cases (worker calibrate uses them
too), importable from here as before."""

from worker.evaluation.phantom_cases import demo_dir_or_phantoms, save_npz_deterministic, write_phantoms

__all__ = ["demo_dir_or_phantoms", "save_npz_deterministic", "write_phantoms"]
