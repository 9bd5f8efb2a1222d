"""The pipeline: one module per stage, the DAG declared once (``dag.py``).

Each stage calls one internal service through its stub with object references and returns
what it produced (``StageResult``); the orchestrator runs the DAG, records every step, and
decides about retries and deadlines.
"""

from gateway.pipeline.base import (
    Stage,
    StageContext,
    StageResult,
    Wiring,
    finished,
)
from gateway.pipeline.dag import STAGES, build_stages, plan_stages

__all__ = [
    "STAGES",
    "Stage",
    "StageContext",
    "StageResult",
    "Wiring",
    "build_stages",
    "finished",
    "plan_stages",
]
