"""Forecasting over stored bars, shared by the daily pipeline, backtests and the command line.

``params`` (imported when Airflow parses the DAG files) loads neither torch nor pandas; import
``windows`` and ``engine`` where forecasts are made.
"""
