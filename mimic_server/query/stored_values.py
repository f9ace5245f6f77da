"""The values of a stored header (DICOM JSON) as the matcher compares them."""

from __future__ import annotations

from typing import Any


class JsonItem:
    """A sequence item of a stored header, for sequence matching."""

    def __init__(self, item: dict[str, Any]) -> None:
        self.item = item

    def values(self, keyword: str, tag: int) -> list[Any] | None:
        return json_values(self.item.get(f"{tag:08X}"))


def json_values(element: dict[str, Any] | None) -> list[Any] | None:
    if not element:
        return None
    values = element.get("Value")
    if values is None:
        return []
    if element.get("vr") == "PN":
        groups = ("Alphabetic", "Ideographic", "Phonetic")
        return ["=".join(v.get(g, "") for g in groups).rstrip("=") for v in values]
    if element.get("vr") == "SQ":
        return [JsonItem(item) for item in values]
    return values
