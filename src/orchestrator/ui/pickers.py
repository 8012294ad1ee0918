"""Where the Generate form's image inputs can come from, besides an upload.

Each source is a panel (an HTML fragment) listing pickable images: elements with
``data-pick-value`` (the reference the API accepts, e.g. ``output:<job>/<n>`` or
``asset:<id>``), ``data-pick-thumb`` (a preview URL) and ``data-pick-label``. A new
source (imported site assets, say) is one more entry here and one more panel route.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageSource:
    key: str
    label: str
    panel: str  # URL of the fragment that lists the choices (accepts ?q=)


IMAGE_SOURCES: list[ImageSource] = [
    ImageSource("outputs", "Earlier outputs", "/ui/panels/pick-outputs"),
    ImageSource("assets", "Imported site images", "/ui/panels/pick-assets"),
]
