"""Accept header negotiation (PS3.18 8.7): the first offered media type the request accepts,
else 406 Not Acceptable. Parameters other than ``type`` and ``transfer-syntax`` are ignored;
each offer takes the q of the most specific range naming it (RFC 9110 12.5.1), and ``q=0``
excludes it."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from mimic_server.web.dicomweb.errors import WebError


@dataclass(frozen=True)
class MediaRange:
    type: str
    params: dict[str, str]
    q: float

    def matches(self, offered: str, offered_params: dict[str, str]) -> bool:
        """Whether this range names ``offered``, whatever its q."""
        if not _matches(self.type, offered):
            return False
        wanted = self.params.get("type")
        if wanted is not None and not _matches(wanted.lower(), offered_params.get("type", "")):
            return False
        # A transfer syntax asked for must be the one offered, when an offer names one
        # (frames: their stored syntax, PS3.18 8.7.3.5); "*" asks for none in particular.
        syntax, offered_syntax = self.params.get("transfer-syntax"), offered_params.get(
            "transfer-syntax")
        return syntax in (None, "", "*") or offered_syntax is None or syntax == offered_syntax


    @property
    def specificity(self) -> tuple[int, int]:
        """RFC 9110 12.5.1: a type with parameters before the type, before ``type/*``, before
        ``*/*``; the most specific range naming an offer gives its q."""
        kind = 0 if self.type in ("*/*", "*") else 1 if self.type.endswith("/*") else 2
        return kind, len(self.params)


def _matches(pattern: str, media_type: str) -> bool:
    """``*/*``, ``image/*`` or an exact type."""
    if pattern in ("*/*", "*", media_type):
        return True
    return pattern.endswith("/*") and media_type.split("/")[0] == pattern[:-2]


def parse_media_type(text: str) -> tuple[str, dict[str, str]]:
    parts = [p.strip() for p in text.split(";")]
    params: dict[str, str] = {}
    for part in parts[1:]:
        name, _, value = part.partition("=")
        if name:
            params[name.strip().lower()] = value.strip().strip('"')
    return parts[0].lower(), params


def _split(header: str) -> list[str]:
    """Media ranges separated by commas outside quoted strings."""
    out, current, quoted = [], [], False
    for char in header:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            out.append("".join(current))
            current = []
        else:
            current.append(char)
    out.append("".join(current))
    return [o.strip() for o in out if o.strip()]


def accepted_ranges(request: Request) -> list[MediaRange]:
    # Every Accept field line, as one list (RFC 9110 5.3): the first alone refused a request
    # whose second line named the type served.
    header = ", ".join(request.headers.getlist("accept")) or "*/*"
    ranges = []
    for item in _split(header):
        media, params = parse_media_type(item)
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        ranges.append(MediaRange(media, params, q))
    return ranges


def negotiate(request: Request, offered: list[str]) -> tuple[str, dict[str, str]]:
    """The first of ``offered`` (``type/subtype; param=value``) that the Accept header
    allows, with the client's requested parameters (transfer-syntax); 406 otherwise."""
    ranges = accepted_ranges(request)
    best: tuple[float, int, str, dict[str, str]] | None = None
    for index, text in enumerate(offered):
        media, params = parse_media_type(text)
        naming = [r for r in ranges if r.matches(media, params)]
        if not naming:
            continue
        # The most specific range decides (``image/jpeg;q=0, image/*`` refuses image/jpeg),
        # not the highest q of any range that names the offer; the first listed on a tie.
        accepted = max(naming, key=lambda r: r.specificity)
        if accepted.q <= 0:
            continue
        rank = (accepted.q, -index)
        if best is None or rank > (best[0], best[1]):
            best = (accepted.q, -index, text, accepted.params)
    if best is None:
        raise WebError(406, "none of the accepted media types can be served; offered: "
                       + ", ".join(offered))
    return best[2], best[3]
