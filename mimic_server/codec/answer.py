"""One C-FIND answer as plain values, encoded without pydicom's dataset writer.

Building a pydicom ``Dataset`` for every match and encoding it with pydicom took about half of
a C-FIND's time per match. Most answers hold only text (the typed index columns, computed
attributes, plain values of the stored header): an :class:`Answer` keeps those as ``(VR,
value)`` and writes its own bytes for the negotiated little endian transfer syntax; pynetdicom
is handed those bytes by the encoder ``codec.command_set`` installs. Anything else (big
endian, a value that is not plain) goes through :meth:`Answer.to_dataset` and pydicom, as
before. tests/unit/test_answer.py checks both give the same bytes.
"""

from __future__ import annotations

import struct
from typing import Any

from pydicom.dataset import Dataset

#: VRs with a 4-byte length in explicit VR (PS3.5 7.1.2).
_LONG = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
#: Text encoded with the answer's Specific Character Set (always ISO_IR 192, UTF-8).
_CHARSET_TEXT = frozenset({"SH", "LO", "ST", "PN", "LT", "UC", "UT"})
#: Text of the default repertoire.
_ASCII_TEXT = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "UR", "IS"})
_NUMBERS = {"US": "H", "UL": "I", "SS": "h", "SL": "i"}
PLAIN_VRS = _CHARSET_TEXT | _ASCII_TEXT | frozenset(_NUMBERS)
UTF8 = "ISO_IR 192"


#: Whether an :class:`Answer` is left empty for ``codec.command_set.answer_encoder`` to
#: write: set by the fence (``mimic_server/patches.py``) when it has installed that encoder.
#: Otherwise each answer is also filled as a ``Dataset``, which pynetdicom's own encoder writes.
self_encoding = False


class Answer(Dataset):
    """A C-FIND answer Identifier held as plain ``tag -> (VR, value)``.

    ``value`` is None (empty), a str, or a list of str (ints for US / UL / SS / SL).
    While :data:`self_encoding` is on, the ``Dataset`` itself stays empty: :meth:`to_dataset`
    builds the real one when needed.
    """

    _mimic_plain: dict[int, tuple[str, Any]]

    @classmethod
    def of(cls, plain: dict[int, tuple[str, Any]], *, fill: bool | None = None) -> Answer:
        """``fill`` False leaves the ``Dataset`` empty for a caller that reads the plain
        values itself (QIDO-RS writes DICOM JSON from them); None fills it unless
        :data:`self_encoding` is on."""
        answer = cls()
        answer._mimic_plain = plain
        if fill is None:
            fill = not self_encoding
        if fill:
            for tag in sorted(plain):
                vr, value = plain[tag]
                answer.add_new(tag, vr, value)
        return answer

    def to_dataset(self) -> Dataset:
        dataset = Dataset()
        for tag in sorted(self._mimic_plain):
            vr, value = self._mimic_plain[tag]
            dataset.add_new(tag, vr, value)
        return dataset

    def encode(self, implicit: bool, little: bool) -> bytes | None:
        """The answer's bytes in this encoding, or None where pydicom must write them."""
        plain = self._mimic_plain
        if not little or plain.get(0x00080005, ("CS", UTF8))[1] != UTF8:
            return None
        parts: list[bytes] = []
        for tag in sorted(plain):
            vr, value = plain[tag]
            data = _value_bytes(vr, value)
            if data is None:
                return None
            group, number = tag >> 16, tag & 0xFFFF
            if implicit:
                parts.append(struct.pack("<HHL", group, number, len(data)))
            elif vr in _LONG:
                parts.append(struct.pack("<HH2sxxL", group, number, vr.encode(), len(data)))
            elif len(data) <= 0xFFFF:
                parts.append(struct.pack("<HH2sH", group, number, vr.encode(), len(data)))
            else:
                return None
            parts.append(data)
        return b"".join(parts)


def pack_numbers(values: list[Any], code: str) -> bytes | None:
    """Ints as little endian binary numbers (``struct`` code); None if one is not an int
    or does not fit."""
    if not all(type(v) is int for v in values):
        return None
    try:
        return struct.pack(f"<{len(values)}{code}", *values)
    except struct.error:
        return None


def _value_bytes(vr: str, value: Any) -> bytes | None:
    if value is None or value == "" or value == []:
        return b""
    values = value if isinstance(value, list) else [value]
    if vr in _NUMBERS:
        return pack_numbers(values, _NUMBERS[vr])
    if not all(isinstance(v, str) for v in values):
        return None
    text = "\\".join(values)
    if vr in _CHARSET_TEXT:
        data = text.encode("utf-8")
    else:
        try:
            data = text.encode("ascii")
        except UnicodeEncodeError:
            return None
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    return data
