"""A scoring run in its own process, as a second worker or a crashing one would be (used by the tests).

Usage: python score_worker.py '<ScoreParams JSON>' [slow_seconds_per_batch] [--rows]
Prints one JSON line per file outcome; with --rows also `{"rows": n}` after each batch scored (n rows).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from maas.modules.score import ScoreParams, plan, score_file  # noqa: E402


def main() -> None:
    params = ScoreParams.model_validate_json(sys.argv[1])
    pause = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    tell = "--rows" in sys.argv[3:]

    def progress(rows: int) -> None:
        if tell:
            print(json.dumps({"rows": rows}), flush=True)
        time.sleep(pause)

    job = plan(params)
    for obj in job.files:
        outcome = score_file(job, obj, progress=progress)
        print(outcome.model_dump_json(), flush=True)


if __name__ == "__main__":
    main()
