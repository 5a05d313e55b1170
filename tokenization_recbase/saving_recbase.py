"""Saving a folder whole, file by file: what the model's and the tokenizer's ``save_pretrained`` write goes to a
staging folder beside the target first, and each finished file is then renamed into the target (one file alone:
``write_atomically``). A kill at any
moment leaves every file of the folder either as it was or as it is now, never cut short; the tokenizer's items
are one file (``items.safetensors``), so its items are always those of one save.

Shipped beside the weights (with the tokenizer, and with the model through the identical file
``modeling_recbase/saving_recbase.py``, a link to this one): imports only the standard library.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path


def save_through_staging(save_directory: str | os.PathLike, write: Callable[[str], object]) -> object:
    """``write(staging)`` writes the files; each is then renamed into ``save_directory`` (created if needed), the
    largest last. Returns what ``write`` returned (paths in a tuple: their place in ``save_directory``). Several
    writers of one folder never share a staging folder."""
    target = Path(save_directory)
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    try:
        result = write(str(staging))
        files = sorted((path for path in staging.rglob("*") if path.is_file()), key=lambda path: path.stat().st_size)
        for path in files:
            destination = target / path.relative_to(staging)
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if isinstance(result, tuple):  # the paths written, as save_pretrained returns them: where they are now
        result = tuple(
            str(target / Path(path).relative_to(staging)) if Path(path).is_relative_to(staging) else path
            for path in result
        )
    return result


def write_atomically(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """``write(temporary_path)`` fills a temporary file beside ``path``, which then replaces ``path``; on failure the
    temporary file is removed and ``path`` is unchanged. The temporary name is unique to the process and thread."""
    temporary = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


__all__ = ["save_through_staging", "write_atomically"]
