"""Pure parsers of project lists (``/simple/``): the names, and where a list links a page
that is not at the canonical name's URL.

The list of a public index holds about a million projects: it is read an element (or an
anchor) at a time, and the names kept packed and sorted (``names``).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urldefrag, urljoin, urlsplit

from packaging.utils import NormalizedName, canonicalize_name

from nightproxy.simple_api.names import ProjectNames
from nightproxy.simple_api.parse import (
    JSON_TYPE,
    log_skipped,
    read_anchors,
    read_json_member,
)


@dataclass(frozen=True, slots=True)
class ProjectList:
    """An upstream's project list."""

    names: ProjectNames
    #: Where the list links a project whose page is not at its canonical name (a static tree
    #: links ``zope.interface/``); names it links canonically are not here (on a list of a
    #: million projects such a map would cost more than it says).
    links: dict[NormalizedName, str]


def parse_project_list_page(
    body: bytes, content_type: str, base_url: str, upstream: str = "upstream"
) -> ProjectList:
    """The names of a ``/simple/`` page, canonicalized; links resolved on ``base_url``.

    JSON lists carry no links. Links ``urllib`` cannot take are skipped.
    """
    media = content_type.split(";", 1)[0].strip().lower()
    names: list[str] = []
    links: dict[NormalizedName, str] = {}
    if media in {JSON_TYPE, "application/json"} or body.lstrip()[:1] == b"{":

        def on_project(entry: object) -> None:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                names.append(canonicalize_name(entry["name"]))

        read_json_member(body, "projects", on_project)
        return ProjectList(ProjectNames.build(names), links)
    skipped = 0

    def on_anchor(attrs: dict[str, str | None], _base: str | None) -> None:
        nonlocal skipped
        href = attrs.get("href")
        if not href:
            return
        try:
            segment = unquote(urlsplit(href).path.rstrip("/").rsplit("/", 1)[-1])
            if not segment or segment in {".", ".."}:
                return
            name = canonicalize_name(segment)
            if segment != name and name not in links:
                links[name] = urldefrag(urljoin(base_url, href))[0]
        except ValueError:
            skipped += 1
            return
        names.append(name)

    read_anchors(body, on_anchor)
    log_skipped(upstream, "the project list", skipped)
    return ProjectList(ProjectNames.build(names), links)


def parse_project_list(body: bytes, content_type: str) -> frozenset[NormalizedName]:
    """The project names of a ``/simple/`` page, canonicalized."""
    return frozenset(parse_project_list_page(body, content_type, "").names)
