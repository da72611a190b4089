"""MLflow model registry: register tokenizer/model pairs, resolve aliases to pinned versions, promote, roll back.

``registry.pinned`` imports no MLflow; the names below load their modules, and MLflow, on first use.
"""

from __future__ import annotations

from kronos_tasks.lazy import lazy_attributes

_LAZY = {
    "PinnedPair": ".pinned",
    "Move": ".listing",
    "Registry": ".registry",
    "RegistryError": ".mlflow_setup",
    "check_reachable": ".mlflow_setup",
    "client": ".mlflow_setup",
    "ensure_experiment": ".mlflow_setup",
}

__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = sorted(_LAZY)
