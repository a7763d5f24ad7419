"""The bad-input corpus through `producer submit` (embedded engine, box-echo model): every bad study gets its
own specific error, the good ones complete, and nothing is written for the bad ones."""

from __future__ import annotations

import json

from click.testing import CliRunner

from bad_inputs import HUGE_LIMIT, expected_outputs, write_corpus
from producer.cli import cli


def test_every_bad_study_gets_its_own_error_and_the_good_ones_complete(echo_models_dir, tmp_path, monkeypatch):
    expected = write_corpus(tmp_path / "in")
    monkeypatch.setenv("LITEMEDSAM_MAX_VOXELS", str(HUGE_LIMIT))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["submit", str(tmp_path / "in"), "--out", str(out), "--models-dir", str(echo_models_dir)]
    )
    assert result.exit_code == 0, result.output  # some studies succeeded: the batch is not a failure
    lines = {r["study"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}
    assert set(lines) == set(expected)
    for name, fragment in expected.items():
        line = lines[name]
        if fragment is None:
            assert line["status"] == "ok", line
        else:
            assert line["status"] == "error" and fragment in line["error"], (name, line["error"])
    written = {p.name for p in out.iterdir()} - {"metrics.jsonl"}
    assert written == expected_outputs(expected)
