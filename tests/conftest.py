"""Test-session isolation: nothing a test runs may touch the user's home or the repo's state.

Set before any test module imports Prefect or MLflow (they read their settings once): HOME and
PREFECT_HOME point into a session temp folder, telemetry is off, and Prefect is tuned as for
embedded runs (see infra.embedded).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from infra.embedded import configure_embedded
from infra.state import StateDir

_SESSION = Path(tempfile.mkdtemp(prefix="fedsilo-tests-"))
(_SESSION / "home").mkdir()
os.environ["HOME"] = str(_SESSION / "home")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("FEDSILO_TRACKING_URI", None)
os.environ.pop("FEDSILO_EXCHANGE", None)
os.environ["FEDSILO_HOME"] = str(_SESSION / "default-state")
configure_embedded(StateDir(_SESSION / "session-state"))

REPO = Path(__file__).resolve().parent.parent
SESSION_DIR = _SESSION
