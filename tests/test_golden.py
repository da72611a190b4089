"""Golden seeds: what a fixed seed draws and forecasts, pinned across releases.

tests/fixtures/golden/expected.json holds the random-stream keys, every uniform draw, the s1/s2 tokens of
four sample paths and the close forecast that the committed demonstration pair produces for the first 120
GOOG bars with seed 20261203, on the CPU in float32. A change to the stream or the decoding fails here; if
it is meant, bump ``STREAM_VERSION`` and rebuild the file (tests/fixtures/golden/build.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).with_name("fixtures") / "golden"
sys.path.insert(0, str(FIXTURES))

import build  # noqa: E402

from kronos_tasks.inference.sampling import STREAM_VERSION  # noqa: E402


def test_a_fixed_seed_draws_the_recorded_stream_tokens_and_forecast():
    expected = json.loads((FIXTURES / "expected.json").read_text())
    assert expected["stream_version"] == STREAM_VERSION, "the stream version changed: rebuild the golden file"
    produced = build.produce()
    assert produced["keys"] == expected["keys"]
    assert produced["uniforms"] == expected["uniforms"]  # 24-bit draws: exact in float32
    assert produced["s1"] == expected["s1"] and produced["s2"] == expected["s2"]
    for name in ("close_mean", "close_q0.1", "close_q0.9"):
        # float32 sums may round differently on another CPU's instruction set; the tokens above are exact
        np.testing.assert_allclose(produced[name], expected[name], rtol=1e-5, err_msg=name)
