"""MLflow model registry: register tokenizer/model pairs, resolve aliases to pinned versions, promote, roll back."""

from .mlflow_setup import RegistryError, check_reachable, client, ensure_experiment
from .registry import Move, PinnedPair, Registry

__all__ = ["Move", "PinnedPair", "Registry", "RegistryError", "check_reachable", "client", "ensure_experiment"]
