"""Scoring against ground truth, shared by the worker (`worker calibrate`) and the producer (`evaluate`, `demo`):

- metrics: the challenge's DSC and NSD per case, the per-modality means and the leaderboard average;
- derived: evaluation cases derived from cases with ground truth (other slices, sub-volumes, crops);
- phantom_cases: the synthetic phantoms (models.phantoms) written as challenge npz cases.

It imports only the contract, models/ and the scientific libraries of both extras (scipy, surface-distance), so
neither side imports the other to score.
"""
