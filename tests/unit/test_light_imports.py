"""A silo's round run starts a fresh process on its pool, and the CLI starts one per command: loading
the silo flow, its protocol steps and the config must not pay for torch, Opacus, Great Expectations
or MLflow (about 5 s of imports), which only training, evaluation, validation and tracking use, when
they run."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "opacus", "great_expectations", "mlflow")


def loaded_after(statement: str) -> list[str]:
    probe = f"import json, sys\n{statement}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_silo_flow_and_the_protocol_tasks_load_without_the_heavy_libraries():
    assert loaded_after("import flows.silo, tasks.secure_silo, tasks.silo_round, infra.config, infra.mailbox") == []


def test_training_still_loads_torch_where_it_is_used():
    assert "torch" in loaded_after("import tasks.silo")
