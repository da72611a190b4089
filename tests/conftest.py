"""Shared fixtures: small random Kronos pairs, the sample data, and real services."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from kronos_tasks.model.presets import random_model, random_tokenizer

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "kronos_tasks" / "sample_data"
FEATURES = ["open", "high", "low", "close", "volume", "amount"]


@pytest.fixture(scope="session")
def a_share() -> pd.DataFrame:
    return pd.read_csv(SAMPLE_DATA / "a_share_5min.csv", parse_dates=["timestamps"])


@pytest.fixture(scope="session")
def tiny_pair32():
    return random_tokenizer("tiny", seed=11), random_model("tiny", seed=12)


@pytest.fixture(scope="session")
def tiny_pair64():
    return random_tokenizer("tiny", seed=11).double(), random_model("tiny", seed=12).double()


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield
