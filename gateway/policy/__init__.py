"""Policy: the YAML document operators edit, its validation and its compiled runtime form."""

from pathlib import Path

from ._compiled import CompiledPolicy, Decision, RequestFacts, Target
from ._document import (
    Arm,
    CacheRule,
    CircuitRule,
    Experiment,
    Guardrails,
    LatencyRule,
    Match,
    ModelEntry,
    PolicyDocument,
    Route,
    TargetRef,
)
from ._loader import (
    PolicyIssue,
    PolicyLoadError,
    format_path,
    issue_at,
    load_policy_file,
    parse_policy,
)

__all__ = [
    "Arm",
    "CacheRule",
    "CircuitRule",
    "CompiledPolicy",
    "Decision",
    "Experiment",
    "Guardrails",
    "LatencyRule",
    "Match",
    "ModelEntry",
    "PolicyDocument",
    "PolicyIssue",
    "PolicyLoadError",
    "RequestFacts",
    "Route",
    "Target",
    "TargetRef",
    "compile_policy_file",
    "format_path",
    "issue_at",
    "load_policy_file",
    "parse_policy",
]


def compile_policy_file(path: str, base_dir: Path | None = None) -> CompiledPolicy:
    """Load, validate and compile a policy file; raises PolicyLoadError with file:line.
    Relative model paths resolve in ``base_dir`` (default: the current directory)."""
    return CompiledPolicy(load_policy_file(path), source=str(path), base_dir=base_dir)
