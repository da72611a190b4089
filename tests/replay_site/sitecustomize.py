"""Installs the vendor replays (tests/replay.py) in child processes of the tests that set KRONOS_REPLAY_CACHE."""

import os

if os.environ.get("KRONOS_REPLAY_CACHE"):
    import replay

    replay.install(os.environ["KRONOS_REPLAY_CACHE"])
