"""The UIDs of association negotiation, checked once per process instead of each time.

Every A-ASSOCIATE-RQ names its abstract and transfer syntaxes again: dcmtk's ``storescu``
proposes 128 presentation contexts with three transfer syntaxes each. pynetdicom builds a
pydicom ``UID`` from every one of them, and validates it, several times over: when the PDU's
items are decoded (``set_uid``), when they become the request primitive's presentation
contexts (``set_uid`` and ``add_transfer_syntax``: the UID built again, ``validate_uid``, two
``is_valid`` matches), and when the acceptor's contexts are negotiated from those (the same
again). Some 2,300 ``UID`` constructions and 4,000 regular expression matches an
association: about half of the ~50 ms of CPU an association cost the server before its first
C-STORE, under the GIL, while the other associations wait.

The answer is the same every time for the same text, and for a *conformant* UID (pydicom's
pattern, 1 to 64 characters) it is always the plain result: nothing raised, nothing logged,
whatever the flags. So the first time pynetdicom's own code turns a value into a conformant
UID, the result is remembered under that value, and the next association gets that same
(immutable) ``UID`` at once. Anything else (empty, ``None``, non-conformant, another type)
goes to pynetdicom's code every time, so its errors and warnings are unchanged. The memory
is bounded (:data:`LIMIT` values; a peer proposing endless new UIDs only stops the learning)
and shared by the threads of a process (a ``dict``'s ``get`` and item assignment are atomic).

Installed by the fence (``patches.py``, ``negotiation-uids``) as the name ``set_uid`` of the
modules that build A-ASSOCIATE PDUs, primitives and presentation contexts, and as
``PresentationContext.add_transfer_syntax``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydicom.uid import UID

#: The most values remembered (each map): far more than the SOP classes and transfer
#: syntaxes there are, few enough that a peer sending junk cannot grow the process.
LIMIT = 4096

#: Value as given (``str``, ``UID`` or ``bytes``) -> the conformant ``UID`` ``set_uid`` made.
_uids: dict[str | bytes, UID] = {}
#: Transfer syntax text -> the ``UID`` ``add_transfer_syntax`` appends without a warning.
_syntaxes: dict[str, UID] = {}


def _plain(value: object) -> bool:
    """A value whose conversion depends on its text alone: ``str``, ``bytes``, or a
    ``UID`` without a private transfer syntax's encoding attached (which the conversion
    would carry over)."""
    kind = type(value)
    return kind is str or kind is bytes or (
        kind is UID and not hasattr(value, "_PRIVATE_TS_ENCODING"))


def _remember(memo: dict[Any, UID], value: str | bytes, uid: UID) -> None:
    if len(memo) < LIMIT:
        memo[value] = uid


def known_uid_setter(set_uid: Callable[..., Any]) -> Callable[..., Any]:
    """A replacement for pynetdicom's ``set_uid`` that answers a value it has seen turn
    into a conformant UID with that UID."""

    def set_known_uid(
        value: Any, name: str, allow_empty: bool = True, allow_none: bool = True,
        validate: bool = True,
    ) -> Any:
        plain = _plain(value)
        if plain:
            known = _uids.get(value)
            if known is not None:
                return known
        uid = set_uid(value, name, allow_empty, allow_none, validate)
        if plain and type(uid) is UID and uid and uid.is_valid:
            _remember(_uids, value, uid)
            _remember(_uids, str(uid), uid)
        return uid

    return set_known_uid


def known_syntax_adder(add_transfer_syntax: Callable[..., Any]) -> Callable[..., Any]:
    """A replacement for ``PresentationContext.add_transfer_syntax`` that appends a
    transfer syntax it has seen added without a warning (conformant, and a transfer syntax
    or private) without building and checking it again."""

    def add_known_transfer_syntax(self: Any, syntax: Any) -> None:
        plain = type(syntax) is not bytes and _plain(syntax)
        if plain:
            known = _syntaxes.get(syntax)
            if known is not None:
                if known not in self._transfer_syntax:
                    self._transfer_syntax.append(known)
                return
        add_transfer_syntax(self, syntax)
        if plain:
            uid = UID(syntax)
            if uid and uid.is_valid and (uid.is_private or uid.is_transfer_syntax):
                _remember(_syntaxes, str(uid), uid)

    return add_known_transfer_syntax


def forget() -> None:
    """Empty the memory (tests)."""
    _uids.clear()
    _syntaxes.clear()
