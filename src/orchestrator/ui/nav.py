"""The UI's navigation: one list, so a new page is one more entry here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NavItem:
    key: str  # what a page passes as ``active`` to highlight its entry
    label: str
    path: str


NAV: list[NavItem] = [
    NavItem("dashboard", "Dashboard", "/ui/"),
    NavItem("generate", "Generate", "/ui/generate"),
    NavItem("jobs", "Jobs", "/ui/jobs"),
    NavItem("gallery", "Gallery", "/ui/gallery"),
    NavItem("sites", "Sites", "/ui/sites"),
    NavItem("backends", "Backends", "/ui/backends"),
    NavItem("costs", "Costs", "/ui/costs"),
    NavItem("settings", "Settings", "/ui/settings"),
]


def add(item: NavItem, *, before: str | None = None) -> None:
    """Add a page to the navigation (at the end, or before the entry ``before``)."""
    if any(existing.key == item.key for existing in NAV):
        return
    keys = [existing.key for existing in NAV]
    NAV.insert(keys.index(before) if before in keys else len(NAV), item)
