"""The one run key: a cached run (a student, an evidence run, a distilled model, a study) is found again by
the sha256 of the configuration fields that decide its results, as sorted JSON. Each caller chooses those
fields (dropping how the work is spread over processes or devices); the hashing is here once."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def run_key(payload: Any, length: int = 10) -> str:
    """Hex prefix of sha256(sorted JSON of `payload`): the name part of a run's cache folder or file."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:length]
