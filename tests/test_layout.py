"""The code's shape: packages that only point down, and forecast parameters defined, defaulted and checked once."""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from kronos_tasks.errors import KronosFlowError, ParamsError
from kronos_tasks.forecasting.params import ForecastParams

PACKAGE = Path(__file__).resolve().parents[1] / "kronos_tasks"


def package_imports() -> dict[str, set[str]]:
    """Which kronos_tasks packages (or top-level modules) each one imports, function-level imports included."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = parts[:-1] if parts[-1] == "__init__" else parts
        source = module[1] if len(module) > 1 else "kronos_tasks"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level:
                base = list(module if parts[-1] == "__init__" else module[:-1])[: len(module) - node.level + 1]
                targets = [".".join(base + ([node.module] if node.module else []))]
            elif isinstance(node, ast.ImportFrom):
                targets = [node.module or ""]
            else:
                continue
            for target in targets:
                names = target.split(".")
                if names[0] == "kronos_tasks":
                    destination = names[1] if len(names) > 1 else "kronos_tasks"
                    if destination != source:
                        edges[source].add(destination)
    return edges


def test_no_package_imports_a_package_that_imports_it_back():
    edges = package_imports()
    assert "pipeline" in edges["cli"] and "forecasting" in edges["evaluation"]  # the walk sees real imports

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in edges.get(start, ()))

    cycles = sorted((a, b) for a in edges for b in edges[a] if reaches(b, a, {b}))
    assert cycles == [], f"import cycles between packages: {cycles}"
    assert "pipeline" not in edges["evaluation"] and "cli" not in edges["pipeline"]


def test_light_modules_load_without_torch_pandas_or_mlflow():
    code = (
        "import sys\n"
        "import kronos_tasks.forecasting.params, kronos_tasks.pipeline.payloads, kronos_tasks.registry.pinned\n"
        "print(sorted(m for m in ('torch', 'pandas', 'mlflow', 'numpy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_expected_error_is_a_kronos_flow_error():
    from kronos_tasks.data import DataError
    from kronos_tasks.inference import InputError
    from kronos_tasks.model import CheckpointError, ConfigError
    from kronos_tasks.pipeline.daily import RunFailed
    from kronos_tasks.registry import RegistryError
    from kronos_tasks.settings import SettingsError
    from kronos_tasks.storage import DatabaseError

    expected = (DataError, InputError, CheckpointError, ConfigError, ParamsError, RegistryError, DatabaseError)
    for cls in (*expected, SettingsError, RunFailed):
        assert issubclass(cls, KronosFlowError), cls


# --- one source of forecast parameters ---------------------------------------------------------------------


def test_dag_params_and_cli_options_take_the_defaults_of_forecast_params():
    from kronos_tasks.cli import build_parser
    from kronos_tasks.cli.commands import forecast_params

    specs = ForecastParams.param_specs()
    defaults = ForecastParams()
    assert set(specs) == set(ForecastParams.__dataclass_fields__)
    for name, spec in specs.items():
        value = getattr(defaults, name)
        assert spec["default"] == (list(value) if isinstance(value, tuple) else value), name
    parser = build_parser()
    for argv in (["forecast", "bars.csv", "--out", "x.csv", "--exchange", "XNYS"], ["backtest"]):
        # Options left out give exactly the dataclass defaults.
        assert forecast_params(parser.parse_args(argv)) == defaults
    args = parser.parse_args(["backtest", "--pred-len", "7", "--quantiles", "0.2,0.8", "--T", "0.5", "--seed", "3"])
    got = forecast_params(args)
    assert (got.pred_len, got.quantiles, got.T, got.seed) == (7, (0.2, 0.8), 0.5, 3)


def test_dag_file_builds_its_params_from_forecast_params(tmp_path):
    code = (
        "import json\n"
        "from kronos_tasks.pipeline.run_dag import load_dag\n"
        "params = load_dag('kronos_daily_forecast').params\n"
        "print(json.dumps({k: [params.get_param(k).resolve(suppress_exception=True),\n"
        "                      params.get_param(k).description] for k in params}))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "AIRFLOW_HOME": str(tmp_path / "airflow")}
    env.update({"AIRFLOW__CORE__LOAD_EXAMPLES": "False", "KRONOS_BATCH_SIZE": "7", "KRONOS_MODEL_ALIAS": "prod"})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    shown = json.loads(out.strip().splitlines()[-1])
    for name, spec in ForecastParams.param_specs().items():
        assert shown[name][0] == spec["default"], name
    assert shown["batch_size"][1].endswith("here: 7") and shown["model"][1].endswith("here: prod")
    assert {"watchlist", "forecast_shards", "max_failed_share"} <= set(shown)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"T": math.inf}, "T \\(temperature\\) must be a finite number"),
        ({"T": True}, "T \\(temperature\\)"),
        ({"top_p": True}, "top_p must be in"),
        ({"top_p": 0}, "top_p must be in"),
        ({"top_k": 1.5}, "top_k must be an integer"),
        ({"pred_len": 0}, "pred_len must be an integer >= 1"),
        ({"sample_count": True}, "sample_count must be an integer"),
        ({"quantiles": [0.5, 0.5]}, "quantiles must be distinct"),
        ({"quantiles": [1.0]}, "quantiles must lie strictly between 0 and 1"),
        ({"quantiles": []}, "at least one level"),
        ({"quantiles": "0.5"}, "list of numbers"),
        ({"seed": -1}, "seed must be an integer"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"model": " "}, "model must name an alias"),
        ({"dtype": "float64"}, "dtype must be one of"),
        ({"horizon": 3}, "unknown parameter"),
    ],
)
def test_forecast_params_refuse_what_the_predictor_refuses(values, message):
    with pytest.raises(ParamsError, match=message):
        ForecastParams.from_dict(values)


def test_max_context_is_checked_and_the_window_never_goes_negative():
    with pytest.raises(ParamsError, match="pred_len 600 exceeds the model's max_context 512"):
        ForecastParams.from_dict({"pred_len": 600}, max_context=512)
    with pytest.raises(ParamsError, match="lookback 12 is below min_history 32"):
        ForecastParams.from_dict({"pred_len": 500}, max_context=512)
    with pytest.raises(ParamsError, match="exceeds the model's max_context"):
        ForecastParams.from_dict({"pred_len": 600}).resolve(512, "champion", 32, seed_key="r")


def test_resolve_fills_every_empty_value_and_keeps_given_ones():
    resolved = ForecastParams.from_dict({"pred_len": 24}).resolve(512, "champion", 32, seed_key="run-a")
    assert (resolved.lookback, resolved.model, resolved.batch_size) == (488, "champion", 32)
    assert resolved.seed == ForecastParams().resolve(512, "champion", 32, seed_key="run-a").seed
    assert resolved.seed != ForecastParams().resolve(512, "champion", 32, seed_key="run-b").seed
    given = ForecastParams.from_dict({"lookback": 100, "seed": 5, "model": "3", "batch_size": 4})
    assert given.resolve(512, "champion", 32, seed_key="run-a") == given
    assert ForecastParams.from_dict(resolved.to_dict()) == resolved  # round trip as the payloads carry it
