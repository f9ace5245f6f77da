"""What makes an AE title one a peer can send (PS3.5 6.2, AE VR).

At most 16 characters of the default character repertoire, no control character, no
backslash; leading and trailing spaces are not significant. A title outside that (``CTé``,
full-width letters, 16 characters that are 48 bytes in UTF-8) can never be the calling or
called AE title of an association: as a binding it would only look like one, and the
modality it names would be refused with no word of why.
"""

from __future__ import annotations


def sendable_ae_title(title: str) -> str | None:
    """The title without its leading and trailing spaces, or None if no peer can send it."""
    title = str(title).strip(" ")
    if 1 <= len(title) <= 16 and all(" " <= c <= "~" and c != "\\" for c in title):
        return title
    return None
