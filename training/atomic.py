"""Outputs are written atomically: to a temp file beside the target, then renamed over it."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_text_atomically(path: str | Path, text: str) -> None:
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_json_atomically(path: str | Path, data) -> None:
    write_text_atomically(path, json.dumps(data, indent=2))
