"""The copy of the server's presentation contexts each new association gets, made cheaply.

pynetdicom gives every accepted association ``deepcopy(server.contexts)``: MIMIC supports
177 contexts with 6,488 transfer syntax UIDs, and ``deepcopy`` rebuilds every UID through
pydicom's validating constructor: 40-80 ms of the GIL per association on this VM, while
other associations wait. A modality that opens one association per study or per image pays
it each time. The copy made here is what ``deepcopy`` makes, for the contexts it knows
(``PresentationContext`` objects holding only ``None``, ints, booleans, strings and the list
of transfer syntaxes): new context objects and new lists, sharing the UID strings, which are
immutable. Anything else goes to ``deepcopy``. Installed by the fence (``patches.py``,
``context-copy``) in place of the name ``deepcopy`` of ``pynetdicom.transport``, whose one
use is that copy.

The server's contexts are the same objects, unchanged, from one association to the next, so
each is checked once (every transfer syntax a ``str``, every other value immutable: 0.34 of
the 0.42 ms the copy of MIMIC's 177 contexts took) and remembered with the very values it
held; it is checked again when any value is another object or its list of transfer syntaxes
has another length, which is how pynetdicom's setters change a context (a new list, or an
appended syntax). Only a list changed in place to the same length, an item replaced by a
mutable object, would escape that; nothing does so to the server's contexts.

The listener's own contexts need no copy at all: :func:`shared_contexts` makes them
:class:`SharedContext` objects, which refuse every change (their transfer syntaxes a tuple),
held in a :class:`SharedContexts` tuple, and the association's "copy" of those is a new list
of the same objects (0.3 against 200 us for MIMIC's 177). pynetdicom's acceptor only reads
them (``negotiate_as_acceptor`` and ``negotiate_unrestricted``; the fence's
``shared-contexts`` pins them and the way the contexts go to them); a change anywhere would
raise instead of reaching another association. Code that would change
one association's contexts (in an ``EVT_REQUESTED`` handler, say) gives the acceptor a new
list, with :func:`copy_plain` copies of the contexts it changes; none does so today.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from itertools import repeat
from operator import is_
from typing import Any

from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom.presentation import PresentationContext

#: The attributes ``PresentationContext.__init__`` sets (verified by the fence).
_FIELDS = frozenset({"_context_id", "_abstract_syntax", "_transfer_syntax", "result",
                     "_scu_role", "_scp_role", "_as_scp", "_as_scu"})
_IMMUTABLE = (type(None), bool, int, str)
#: The most contexts remembered as checked: far more than a server has.
LIMIT = 4096
#: id(context) -> (the context, the values it held when checked, its number of syntaxes).
_checked: dict[int, tuple[PresentationContext, tuple[Any, ...], int]] = {}


class SharedContext(PresentationContext):
    """One of the listener's presentation contexts, which every association reads and none
    may change: every attribute, and the transfer syntaxes (a tuple), stay as made.

    It hashes as the context it was made from, but is not equal to it (pynetdicom's
    ``__eq__`` compares the attributes, and a tuple is not a list); nothing compares them."""

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{name}: the listener's presentation contexts are shared by "
                             "every association and cannot be changed")

    def __delattr__(self, name: str) -> None:
        self.__setattr__(name, None)

    def add_transfer_syntax(self, syntax: Any) -> None:
        self.__setattr__("_transfer_syntax", syntax)


class SharedContexts(tuple[SharedContext, ...]):
    """The listener's contexts (``AssociationServer.contexts``): a tuple, so that nothing is
    added or replaced either."""

    __slots__ = ()


def shared_contexts(contexts: list[Any]) -> SharedContexts | None:
    """``contexts`` as :class:`SharedContext` objects with the same values, or None where one
    is not a plain context (then the listener keeps its list, copied per association)."""
    shared = []
    for context in contexts:
        if type(context) is not PresentationContext or not plain(context.__dict__):
            return None
        frozen = PresentationContext.__new__(SharedContext)
        state = frozen.__dict__
        state.update(context.__dict__)
        state["_transfer_syntax"] = tuple(state["_transfer_syntax"])
        shared.append(frozen)
    return SharedContexts(shared)


def copy_contexts(contexts: list[Any]) -> list[PresentationContext] | None:
    """A copy of ``contexts`` equal to ``deepcopy``'s, or None if one is not a plain
    context (then ``deepcopy`` copies them)."""
    copies = []
    new = PresentationContext.__new__
    checked = _checked
    for context in contexts:
        if type(context) is not PresentationContext:
            return None
        state = context.__dict__
        values = tuple(state.values())
        syntaxes = state.get("_transfer_syntax")
        seen = checked.get(id(context))
        if seen is None or seen[0] is not context or len(seen[1]) != len(values) or not (
            all(map(is_, seen[1], values))
        ) or type(syntaxes) is not list or seen[2] != len(syntaxes):
            if not plain(state):
                return None
            if len(checked) < LIMIT or id(context) in checked:
                checked[id(context)] = (context, values, len(state["_transfer_syntax"]))
        copy = new(PresentationContext)
        copy.__dict__.update(state)
        copy._transfer_syntax = list(state["_transfer_syntax"])
        copies.append(copy)
    return copies


def copy_plain(context: PresentationContext) -> PresentationContext:
    """A copy of a context :func:`plain` said may share its values: what ``deepcopy``
    makes of it."""
    copy: PresentationContext = PresentationContext.__new__(PresentationContext)
    state = context.__dict__
    copy.__dict__.update(state)
    copy._transfer_syntax = list(state["_transfer_syntax"])
    return copy


def plain(state: dict[str, Any]) -> bool:
    """The context's attributes (``state``: its ``__dict__``) are ``PresentationContext``'s
    own, its transfer syntaxes a list of strings, every other value immutable: a copy can
    share them."""
    if state.keys() != _FIELDS:
        return False
    syntaxes = state["_transfer_syntax"]
    # map, not a generator: 38 syntaxes a context, 6,464 an association
    if type(syntaxes) is not list or not all(map(isinstance, syntaxes, repeat(str))):
        return False
    return all(isinstance(v, _IMMUTABLE) for k, v in state.items() if k != "_transfer_syntax")


def forget() -> None:
    """Forget which contexts were checked (tests)."""
    _checked.clear()


def copying(original: Callable[..., Any]) -> Callable[..., Any]:
    """``deepcopy`` that copies a list of presentation contexts with :func:`copy_contexts`,
    and gives :class:`SharedContexts` as a list of the same contexts."""

    def deepcopy(x: Any, memo: dict[int, Any] | None = None, _nil: Any = None) -> Any:
        if memo is None:
            if type(x) is SharedContexts:  # nothing in it can change: a list of the same
                return list(x)
            if type(x) is list:
                copies = copy_contexts(x)
                if copies is not None:
                    return copies
        return original(x, memo)

    return deepcopy


#: Where an association keeps the contexts :func:`remembering_lookup` found for it.
_FOUND = "_mimic_contexts_found"
_DEFLATED, _EXPLICIT_LITTLE = DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian


def remembering_lookup(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Association._get_valid_context`` that remembers, per association once it is
    established, the context it found for each question.

    pynetdicom answers each C-STORE sub-operation's lookup by sorting every accepted
    context and filtering the list again (``getscu`` proposes some 120, one per storage SOP
    Class it can take): about 40 us of the GIL a sub-operation of a C-GET / C-MOVE. The
    answer depends only on the question and on the accepted contexts, which negotiation
    sets before ``is_established`` and nothing changes after. A lookup that finds nothing
    is not remembered: it raises, and pynetdicom logs it, each time.

    For a Deflated data set it also chooses better than pynetdicom, whose first convertible
    context may be one in Implicit VR where one in Explicit VR Little Endian was accepted
    too (a requestor proposing one context per transfer syntax, Implicit first): the
    object's own Deflated context, else Explicit VR Little Endian, what the data set is
    once inflated, which ``dimse/stream_send`` sends as it inflates; only else pynetdicom's
    choice, a conversion that inflates and re-encodes the object whole."""

    def _get_valid_context(
        self: Any, ab_syntax: str, tr_syntax: str, role: str | None = None,
        context_id: int | None = None, allow_conversion: bool = True,
    ) -> Any:
        key = (ab_syntax, tr_syntax, role, context_id, allow_conversion)
        found: dict[tuple[Any, ...], Any] | None = self.__dict__.get(_FOUND)
        if found is not None:
            context = found.get(key)
            if context is not None:
                return context
        context = None
        if tr_syntax == _DEFLATED and allow_conversion and context_id is None:
            for syntax in (_DEFLATED, _EXPLICIT_LITTLE):
                with contextlib.suppress(ValueError):  # none accepted in that syntax
                    context = original(self, ab_syntax, syntax, role, None, False)
                    break
        if context is None:
            context = original(self, ab_syntax, tr_syntax, role, context_id, allow_conversion)
        if self.is_established:
            if found is None:
                found = self.__dict__.setdefault(_FOUND, {})
            found[key] = context
        return context

    return _get_valid_context
