"""The reliability suite's tally: bad inputs tried, faults injected and survived, security checks,
inputs against outputs plus quarantine. Tests add what they did; conftest prints the line.

A module of its own so that tests and conftest share one counter (pytest may import a conftest
under a second name).
"""

from __future__ import annotations

from collections import Counter

from maas.modules import storage

TALLY: Counter = Counter()


def record(**counts: int) -> None:
    TALLY.update(counts)


def summary_line() -> str:
    if not TALLY:
        return ""
    t = TALLY
    balanced = t["inputs"] == t["outputs"] + t["quarantined"]
    return (
        f"reliability: {t['bad_inputs']} bad inputs tried ({t['bad_scored']} scored as they should be, "
        f"{t['bad_quarantined']} quarantined with a reason); {t['faults']} faults injected, {t['survived']} "
        f"survived; {t['security']} security checks held; inputs {t['inputs']} = outputs {t['outputs']} + "
        f"quarantined {t['quarantined']}" + ("" if balanced else "  <-- NOT EQUAL")
    )


def account(bucket: str, inputs: int) -> tuple[int, int]:
    """Outputs (manifests) and quarantine reports in the bucket; added to the tally with `inputs`."""
    outputs = len(
        [o for o in storage.list_objects(storage.join(bucket, "predictions")) if o.uri.endswith(".manifest.json")]
    )
    quarantined = len(
        [o for o in storage.list_objects(storage.join(bucket, "quarantine")) if o.uri.endswith(".error.json")]
    )
    record(inputs=inputs, outputs=outputs, quarantined=quarantined)
    return outputs, quarantined
