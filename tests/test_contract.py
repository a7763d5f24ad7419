"""The contract between producer and worker (worker/contract/): light to import, each shared decision made once,
typed messages that keep their wire form, and one table of settings (the docs site renders it: tests/test_docs.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from worker.contract.budget import TimeBudget, study_work
from worker.contract.messages import MessageError, Outcome, Progress, ResultRecord, TaskMessage
from worker.contract.metrics import MetricsExtra, StudyMetrics, Transfer
from worker.contract.routing import MAX_VIEWS, RoutingTable
from worker.contract.settings import EngineConfig, Environment, FleetSettings, thread_plan
from worker.contract.study import Study, StudyError, is_3d
from worker.contract.validation import check_study

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("celery", "kombu", "openvino", "pydicom", "redis", "cv2", "highdicom", "nibabel", "fastapi", "torch")


def _imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_the_contract_imports_nothing_heavy():
    modules = sorted(p.stem for p in (REPO / "worker" / "contract").glob("*.py") if p.stem != "__init__")
    loaded = _imported_after("; ".join(f"import worker.contract.{name}" for name in modules))
    assert not {name.split(".")[0] for name in loaded} & set(HEAVY), sorted(loaded & set(HEAVY))
    assert not any(
        name.startswith(("worker.", "producer.", "models.")) and not name.startswith("worker.contract")
        for name in loaded
    ), sorted(n for n in loaded if n.startswith(("worker.", "producer.")))


def test_the_producers_client_builds_no_worker_app():
    loaded = _imported_after("from producer.fleet import FleetClient")
    assert not {"worker.app", "worker.lifecycle", "worker.tasks", "worker.lease", "worker.process"} & loaded
    assert not {"openvino", "cv2"} & {name.split(".")[0] for name in loaded}


# ----------------------------------------------------------------------------------- decisions made once


@pytest.mark.parametrize(
    "image_shape, boxes, expected",
    [
        ((8, 16, 16), [[1, 1, 0, 5, 5, 3]], True),
        ((16, 16, 3), [[1, 1, 5, 5]], False),
        ((8, 16, 16), [[1, 1, 5, 5]], False),  # 2D boxes on a volume: not run as 3D (validation says why)
        ((16, 16), [[1, 1, 0, 5, 5, 3]], False),
    ],
)
def test_is_3d_is_one_decision(image_shape, boxes, expected):
    image, boxes = np.zeros(image_shape, np.uint8), np.asarray(boxes)
    study = Study("s", "CT", image, boxes)
    assert is_3d(image, study.prompts) is expected and study.is_3d is expected
    assert study.prompts.is_3d is (boxes.shape[1] == 6)  # the prompts decide, the image must agree
    assert study_work(study, None)[2] == (MAX_VIEWS if expected else 1)


def test_a_box_array_that_is_no_prompts_is_a_study_error():
    with pytest.raises(StudyError, match=r"boxes have shape \(6,\)"):
        Study("s", "CT", np.zeros((8, 16, 16), np.uint8), np.array([1, 1, 0, 5, 5, 3]))


def test_validation_rejects_what_is_3d_rejects():
    with pytest.raises(StudyError, match="3D prompts given for an image"):
        check_study(Study("s", "CT", np.zeros((16, 16), np.uint8), np.array([[1, 1, 0, 5, 5, 3]])))
    with pytest.raises(StudyError, match="2D prompts given for a volume"):
        check_study(Study("s", "CT", np.zeros((8, 16, 16), np.uint8), np.array([[1, 1, 5, 5]])))


def test_a_routes_views_and_the_time_budget():
    table = RoutingTable({}, {"PET": {"strategy_3d": "triview"}})
    volume = Study("v", "PET", np.zeros((10, 16, 16), np.uint8), np.array([[1, 1, 0, 5, 5, 3], [2, 2, 1, 6, 6, 4]]))
    image = Study("i", "PET", np.zeros((16, 16, 3), np.uint8), np.array([[1, 1, 5, 5]]))
    assert table.route("PET").views(True) == 3 and table.route("CT").views(True) == 1
    assert table.route("PET").views(False) == 1
    assert study_work(volume, table.route("PET")) == (10, 2, 3)
    assert study_work(volume, table.route("CT")) == (10, 2, 1)
    assert study_work(image, table.route("PET")) == (1, 1, 1)
    budget = TimeBudget(base=100, per_slice=10, per_box_slice=1, ceiling=21600)
    assert budget.limits(*study_work(volume, table.route("PET"))) == budget.limits(10, 2, 3)


def test_thread_plan_warns_when_it_oversubscribes(monkeypatch):
    from worker.contract import settings

    monkeypatch.setattr(settings, "available_cores", lambda: 4)
    assert thread_plan(2) == (2, None)
    threads, warning = thread_plan(3, 2)
    assert threads == 2 and "2 threads x 3 processes > 4 cores" in warning


# ------------------------------------------------------------------------------------------- messages


def test_metrics_json_leaves_out_what_nothing_filled():
    assert StudyMetrics().to_dict() == {}
    error = StudyMetrics(extra=MetricsExtra(node="w@h", delivery=2))
    assert error.to_dict() == {"extra": {"node": "w@h", "delivery": 2}}
    full = StudyMetrics()
    full.times.total, full.counts.boxes, full.provenance.model = 1.5, 2, "litemedsam"
    full.extra.margin = 3.0
    full.transfer().upload = 0.25
    data = full.to_dict()
    assert set(data) == {"times", "counts", "provenance", "extra"}
    assert data["extra"] == {"margin": 3.0, "transfer": {"upload": 0.25}}
    assert StudyMetrics.model_validate(json.loads(json.dumps(data))).to_dict() == data


def test_metrics_keep_notes_nobody_reads_back():
    metrics = StudyMetrics.model_validate({"extra": {"cached": True, "from_a_newer_worker": [1, 2]}})
    assert metrics.extra.cached is True and metrics.to_dict()["extra"]["from_a_newer_worker"] == [1, 2]
    metrics.note(queue_wait=0.5, transfer=Transfer(upload=0.1))
    assert metrics.extra.queue_wait == 0.5 and metrics.extra.transfer.upload == 0.1
    with pytest.raises(ValueError):
        metrics.note(delivery="twice")


def test_outcome_and_result_record_round_trip():
    metrics = StudyMetrics(extra=MetricsExtra(cached=False, node="n"))
    metrics.times.total = 2.0
    outcome = Outcome(name="a", status="ok", modality="CT", result_key="k", metrics=metrics)
    back = Outcome.from_json(outcome.to_json())
    assert back == outcome and back.metrics.extra.node == "n"
    assert json.loads(outcome.to_json())["metrics"] == metrics.to_dict()
    with pytest.raises(MessageError, match="status"):
        Outcome.from_json(json.dumps({"name": "a", "status": "maybe"}))
    record = ResultRecord(np.arange(6, dtype=np.uint16).reshape(2, 3), metrics)
    again = ResultRecord.from_bytes(record.to_bytes())
    assert np.array_equal(again.labels, record.labels) and again.metrics == metrics
    assert record.to_bytes() == again.to_bytes()  # written once, content-addressed: the same bytes


def test_progress_is_an_object_on_the_wire():
    progress = Progress(done=2, total=8, node="w", updated_at=3.0)
    assert json.loads(progress.model_dump_json()) == {"done": 2, "total": 8, "node": "w", "updated_at": 3.0}
    with pytest.raises(MessageError, match="progress"):
        Progress.from_json("{}")


# ------------------------------------------------------------------------------------------- settings


def test_every_variable_the_code_reads_is_in_the_table():
    names = {f"LITEMEDSAM_{name.upper()}" for name in Environment.model_fields}
    used = set()
    for path in [
        *REPO.glob("worker/**/*.py"),
        *REPO.glob("producer/**/*.py"),
        *REPO.glob("models/*.py"),
        REPO / "ops" / "setup.sh",
        REPO / "ops" / "fleet" / "fleet.sh",
    ]:
        used |= set(re.findall(r"LITEMEDSAM_[A-Z][A-Z0-9_]*[A-Z0-9]", path.read_text()))
    assert used <= names, sorted(used - names)


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("LITEMEDSAM_NAMESPACE", "tenantC")
    monkeypatch.setenv("LITEMEDSAM_TIME_PER_SLICE", "7.5")
    monkeypatch.setenv("LITEMEDSAM_QUEUE_ROUTES", "PET=pet")
    monkeypatch.setenv("LITEMEDSAM_STORE", "")  # empty: unset
    monkeypatch.setenv("LITEMEDSAM_MAX_VOXELS", "1000")
    monkeypatch.setenv("LITEMEDSAM_THREADS", "3")
    settings = FleetSettings.from_env("redis://elsewhere:6379/1")
    assert settings.namespace == "tenantC" and settings.budget.per_slice == 7.5
    assert settings.queue_for("pet") == "pet" and settings.store == "redis://elsewhere:6379/1"
    engine = EngineConfig.from_env()
    assert engine.max_voxels == 1000 and engine.threads == 3
    assert engine.with_options(threads=None, precision="bf16").threads == 3
    monkeypatch.setenv("LITEMEDSAM_TIME_BASE", "soon")
    with pytest.raises(ValueError, match="LITEMEDSAM_TIME_BASE"):
        FleetSettings.from_env()
    monkeypatch.delenv("LITEMEDSAM_TIME_BASE")
    monkeypatch.setenv("LITEMEDSAM_NAMESPACE", "bad:ns")
    with pytest.raises(ValueError, match="LITEMEDSAM_NAMESPACE"):
        FleetSettings.from_env()


def test_max_voxels_reaches_the_engine(monkeypatch):
    pytest.importorskip("openvino")
    from producer.cli import engine_settings
    from worker.engine.engine import EngineSettings

    monkeypatch.setenv("LITEMEDSAM_MAX_VOXELS", "1234")
    assert EngineSettings.from_config(EngineConfig.from_env()).max_voxels == 1234  # a fleet worker's engine
    in_process = engine_settings(models_dir=None, precision="f32", threads=0, cache_mb=2048, routing=None)
    assert in_process.max_voxels == 1234  # the in-process run's


def test_a_message_that_cannot_be_made_says_why_in_one_line():
    fields = dict(
        batch_id="b",
        name="n",
        study_id="n",
        modality="CT",
        image_digest="d",
        image_shape=(8, 8, 3),
        boxes_dtype="<U1",
        boxes_shape=(1, 4),
    )
    with pytest.raises(MessageError, match=r"^boxes: boxes must be a numeric array$"):
        TaskMessage.create(**fields, boxes=[["a", "b", "c", "d"]])
    with pytest.raises(MessageError, match="numeric"):
        TaskMessage.create(**fields, boxes=[[True, 1, 2, 3]])
    assert TaskMessage.create(**fields, boxes=[[1, 2.5, 3, 4]]).boxes == [[1, 2.5, 3, 4]]


# module -> the distribution that provides it, for what the worker image imports
DISTRIBUTIONS = {
    "numpy": "numpy",
    "pydantic": "pydantic",
    "pydantic_settings": "pydantic-settings",
    "celery": "celery",
    "kombu": "celery",
    "redis": "redis",
    "click": "click",
    "openvino": "openvino",
    "cv2": "opencv-python-headless",
    "psutil": "psutil",
    "prometheus_client": "prometheus-client",
    "scipy": "scipy",
    "surface_distance": "surface-distance",
    "rich": "rich",
}


def _top_level_imports(path: Path) -> set[str]:
    import ast

    found = set()
    for node in ast.parse(path.read_text()).body:  # module level: what importing the file needs
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def test_the_worker_extra_installs_what_the_worker_imports():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {
        re.split(r"[<>=\[ ]", spec)[0] for spec in project["dependencies"] + project["optional-dependencies"]["worker"]
    }
    files = [
        *REPO.glob("worker/**/*.py"),
        *(REPO / "models" / f"{name}.py" for name in ("paths", "registry", "quantize", "phantoms")),
        *(REPO / "producer" / f"{name}.py" for name in ("derived", "evaluate", "phantoms")),
    ]  # worker calibrate
    stdlib = set(sys.stdlib_module_names) | {"worker", "models", "producer"}
    imported = set().union(*(_top_level_imports(path) for path in files)) - stdlib
    assert imported <= set(DISTRIBUTIONS), sorted(imported - set(DISTRIBUTIONS))
    assert {DISTRIBUTIONS[name] for name in imported} <= declared, sorted(
        {DISTRIBUTIONS[name] for name in imported} - declared
    )


def test_both_clis_offer_the_engine_options_of_one_table():
    """producer submit/demo and worker start/calibrate take their engine options from one table over EngineConfig:
    the same names, types and defaults (the defaults pinned here as the commands have always had them)."""
    from producer.cli import cli as producer_cli
    from worker.cli import cli as worker_cli
    from worker.contract.engine_options import DEFAULTS, OPTIONS

    engine = {"--models-dir": None, "--precision": "f32", "--threads": 0, "--cache-mb": 2048, "--routing": None}
    expected = {
        "producer submit": (producer_cli.commands["submit"], engine),
        "producer demo": (producer_cli.commands["demo"], engine),
        "worker start": (worker_cli.commands["start"], {**engine, "--cpus": ""}),
        "worker calibrate": (
            worker_cli.commands["calibrate"],
            {"--models-dir": None, "--threads": 0, "--routing": None},
        ),
    }
    by_flag = {option.flag: (name, option) for name, option in OPTIONS.items()}
    types = {}
    for command_name, (command, wanted) in expected.items():
        offered = {opt: param for param in command.params for opt in param.opts if opt in by_flag}
        assert {flag: param.default for flag, param in offered.items()} == wanted, command_name
        for flag, param in offered.items():
            field, option = by_flag[flag]
            assert param.name == option.parameter and param.default == DEFAULTS[field]
            types.setdefault(flag, set()).add(json.dumps(param.type.to_info_dict(), sort_keys=True, default=str))
    assert all(len(seen) == 1 for seen in types.values()), types  # one type per option, whichever command
