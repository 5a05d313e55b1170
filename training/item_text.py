"""The unified item text: one template for the items of every domain (RecBase style)."""

from __future__ import annotations

import json
from collections.abc import Mapping

# Per-field limits keep texts short: the encoder truncates anyway, and short texts embed faster.
FIELD_CHARACTER_LIMITS = {"title": 120, "brand": 40, "description": 200, "year": 8, "price": 12}
MAX_CATEGORIES = 6


def unified_item_text(item: Mapping) -> str:
    """``Describe a <item type>:`` and the item's non-empty fields as JSON, each field truncated.

    >>> unified_item_text({"item_type": "movie", "title": "Toy Story", "categories": ["Animation"], "year": "1995"})
    'Describe a movie:\\n{"title": "Toy Story", "categories": ["Animation"], "year": "1995"}'
    """
    fields: dict[str, object] = {}
    for name in ("title", "brand", "categories", "description", "year", "price"):
        value = item.get(name)
        if name == "categories":
            value = [str(c).strip()[:40] for c in (value or []) if str(c).strip()][:MAX_CATEGORIES]
        elif value is not None:
            value = " ".join(str(value).split())[: FIELD_CHARACTER_LIMITS[name]]
        if value:
            fields[name] = value
    item_type = item.get("item_type") or "item"
    article = "an" if item_type[0].lower() in "aeiou" else "a"
    return f"Describe {article} {item_type}:\n{json.dumps(fields, ensure_ascii=False)}"
