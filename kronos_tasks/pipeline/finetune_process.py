"""One process of a multi-process fine-tuning run, as ``torchrun`` starts it (see ``finetune.run_in_processes``).

``python -m kronos_tasks.pipeline.finetune_process REQUEST.json``: the request holds the option values of
``kronos-flow finetune`` and where process 0 writes the outcome.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def terminal_progress(line: str) -> None:
    """Overwrite one progress line on stderr when it is a terminal (nothing otherwise)."""
    if sys.stderr.isatty():
        print(f"\r{line[:110]:<110}", end="", file=sys.stderr, flush=True)


def main(request_path: str) -> int:
    from kronos_tasks.pipeline.finetune import run_request

    values = json.loads(Path(request_path).read_text())
    outcome = run_request(values, terminal_progress)
    if outcome is not None:
        target = Path(values["outcome"])
        target.with_suffix(".tmp").write_text(outcome.to_json())
        target.with_suffix(".tmp").replace(target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
