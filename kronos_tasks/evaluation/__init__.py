"""Forecast quality: scores, baselines, walk-forward backtests, scoring of past runs."""
