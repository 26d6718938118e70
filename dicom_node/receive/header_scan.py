"""The few top-level attributes the receive path needs, read straight from Part 10 bytes.

pydicom builds a Dataset of every element, costly next to the rest of the C-STORE hot path,
where we need eight values and where the pixel data starts. This scanner walks the element headers
of an uncompressed-syntax dataset (Explicit or Implicit VR Little Endian, the syntaxes CT
scanners send), stepping over sequences, and returns None for anything else or anything it
does not fully understand, so that the caller falls back to pydicom, which then decides.

One thing it decides itself: a complete instance whose bytes end inside an element is
truncated (`DatasetTruncated`). pydicom reads such a file without complaint, and an object
without pixel data (an SR, a presentation state) has no Pixel Data length to betray it.
"""

from __future__ import annotations

import functools
import re
import struct
import warnings
from dataclasses import dataclass

from pydicom.charset import convert_encodings

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
UNDEFINED = 0xFFFFFFFF
PIXEL_DATA = 0x7FE00010
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
LONG_LENGTH_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
KNOWN_VRS = LONG_LENGTH_VRS | frozenset(
    {  # PS3.5 table 6.2-1
        b"AE",
        b"AS",
        b"AT",
        b"CS",
        b"DA",
        b"DS",
        b"DT",
        b"FL",
        b"FD",
        b"IS",
        b"LO",
        b"LT",
        b"PN",
        b"SH",
        b"SL",
        b"SS",
        b"ST",
        b"TM",
        b"UI",
        b"UL",
        b"US",
    }
)
SPECIFIC_CHARACTER_SET = 0x00080005
WANTED = {  # tag -> (name, its VR in the data dictionary)
    SPECIFIC_CHARACTER_SET: ("specific_character_set", b"CS"),
    0x00080016: ("sop_class_uid", b"UI"),
    0x00080018: ("sop_instance_uid", b"UI"),
    0x0020000D: ("study_uid", b"UI"),
    0x0020000E: ("series_uid", b"UI"),
    0x00280002: ("samples_per_pixel", b"US"),
    0x00280008: ("number_of_frames", b"IS"),
    0x00280010: ("rows", b"US"),
    0x00280011: ("columns", b"US"),
    0x00280100: ("bits_allocated", b"US"),
}
MAX_DEPTH = 8


class _Unsupported(Exception):
    """Something this scanner leaves to pydicom."""


class DatasetTruncated(ValueError):
    """The instance's bytes end inside an element: it was cut short."""


@dataclass
class ScannedHeader:
    """Raw values of the wanted attributes (bytes), the pixel data's declared length and where
    its value starts (both None: no pixel data element)."""

    transfer_syntax_uid: str
    values: dict[str, bytes]
    pixel_length: int | None
    pixel_offset: int | None

    def pixel_available(self, size: int) -> int:
        """Bytes present after the Pixel Data element header in an instance of `size` bytes."""
        return 0 if self.pixel_offset is None else size - self.pixel_offset

    def text(self, name: str) -> str:
        return self.values.get(name, b"").decode("latin-1").rstrip("\x00 ")

    def us(self, name: str, default: int | None = None) -> int | None:
        value = self.values.get(name)
        return struct.unpack_from("<H", value)[0] if value is not None and len(value) >= 2 else default


def scan_header(data: bytes | bytearray, complete: bool = True) -> ScannedHeader | None:
    """Scan a Part 10 instance (preamble + File Meta + dataset); None: ask pydicom instead.

    `complete=False`: `data` is only the first bytes of the instance (the rest is still
    arriving); the scan answers if the header up to the Pixel Data element lies within them.
    `complete=True`: raises DatasetTruncated when the bytes end inside an element.
    """
    try:
        return _scan(bytes(data), complete)
    except DatasetTruncated:
        if complete:
            raise
        return None
    except struct.error as exc:  # an element header read past the end: out of bytes
        if complete:
            raise DatasetTruncated("dataset ends inside an element header") from exc
        return None
    except (_Unsupported, IndexError, UnicodeDecodeError):
        return None


def _scan(data: bytes, complete: bool) -> ScannedHeader:
    if len(data) < 144 or data[128:132] != b"DICM":
        raise _Unsupported("no Part 10 preamble")
    meta_length = _explicit_element(data, 132)
    if meta_length[0] != 0x00020000 or meta_length[1:3] != (b"UL", 4):
        raise _Unsupported("no File Meta group length")
    start = meta_length[3]
    group_length = struct.unpack_from("<I", data, start)[0]
    offset, end_of_meta = start + 4, start + 4 + group_length
    transfer_syntax = None
    while offset < end_of_meta:
        tag, _, length, value_start = _explicit_element(data, offset)
        if tag >> 16 != 0x0002:
            raise _Unsupported("File Meta element outside group 0002")
        if tag == 0x00020010:
            transfer_syntax = data[value_start : value_start + length].decode("ascii").strip("\x00 ")
        offset = value_start + length
    if offset != end_of_meta or transfer_syntax not in (EXPLICIT_VR_LE, IMPLICIT_VR_LE):
        raise _Unsupported("transfer syntax left to pydicom")
    explicit = transfer_syntax == EXPLICIT_VR_LE
    values: dict[str, bytes] = {}
    size = len(data)
    while offset + 8 <= size:
        tag, vr, length, value_start = _explicit_element(data, offset) if explicit else _implicit_element(data, offset)
        if tag == PIXEL_DATA:
            _check_values(values)
            return ScannedHeader(transfer_syntax, values, length, value_start)
        if tag >= PIXEL_DATA or (tag >> 16) == 0xFFFE:
            raise _Unsupported("unexpected element before pixel data")
        if length == UNDEFINED:
            if explicit and vr not in (b"SQ", b"UN"):
                raise _Unsupported("undefined length outside a sequence")
            # an undefined-length UN holds Implicit VR Little Endian content (PS3.5 6.2.2)
            offset = _skip_undefined_sequence(data, value_start, explicit and vr == b"SQ", 1)
            continue
        if value_start + length > size:
            raise DatasetTruncated(f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) runs past the end")
        wanted = WANTED.get(tag)
        if wanted is not None:
            name, dictionary_vr = wanted
            if explicit and vr != dictionary_vr:
                raise _Unsupported(f"{name} with VR {vr!r}")  # pydicom reads it as that VR, or refuses
            values[name] = data[value_start : value_start + length]
            if tag == SPECIFIC_CHARACTER_SET and not _character_set_readable(values[name]):
                raise _Unsupported("character set left to pydicom")
        offset = value_start + length
    if not complete:
        raise _Unsupported("header continues past the bytes given")
    if offset != size:
        raise DatasetTruncated(f"{size - offset} byte(s) after the last element")
    _check_values(values)
    return ScannedHeader(transfer_syntax, values, None, None)


UID_VALUE = re.compile(rb"^[0-9]+(\.[0-9]+)*\x00?$")
US_NAMES = ("samples_per_pixel", "rows", "columns", "bits_allocated")


def _check_values(values: dict[str, bytes]) -> None:
    """Only plainly valid values are read here; anything odd is left to pydicom's judgement."""
    for name in ("sop_class_uid", "sop_instance_uid", "study_uid", "series_uid"):
        if name in values and not UID_VALUE.match(values[name]):
            raise _Unsupported(f"{name} is not a plain UID")
    for name in US_NAMES:
        if name in values and len(values[name]) != 2:
            raise _Unsupported(f"{name} is not one US value")
    frames = values.get("number_of_frames")
    if frames is not None and not frames.strip(b" ").isdigit():
        raise _Unsupported("NumberOfFrames is not a plain integer")


@functools.lru_cache(maxsize=64)
def _character_set_readable(raw: bytes) -> bool:
    """Whether pydicom can decode text in this Specific Character Set (it refuses the file if not)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            convert_encodings([v.strip() for v in raw.decode("ascii").rstrip("\x00 ").split("\\")])
        return True
    except (LookupError, ValueError):  # not ASCII, or no codec: pydicom could not read the dataset
        return False


_EXPLICIT_HEADER = struct.Struct("<HH2sH")
_IMPLICIT_HEADER = struct.Struct("<HHI")
_UINT32 = struct.Struct("<I")


def _explicit_element(data: bytes, offset: int) -> tuple[int, bytes, int, int]:
    """(tag, VR, length, offset of the value) of an Explicit VR Little Endian element."""
    group, element, vr, short_length = _EXPLICIT_HEADER.unpack_from(data, offset)
    tag = group << 16 | element
    if group == 0xFFFE:  # item and delimiters carry no VR
        return tag, b"", _UINT32.unpack_from(data, offset + 4)[0], offset + 8
    if vr in LONG_LENGTH_VRS:
        return tag, vr, _UINT32.unpack_from(data, offset + 8)[0], offset + 12
    if vr not in KNOWN_VRS:
        raise _Unsupported("not a VR")  # pydicom refuses a VR it does not know
    return tag, vr, short_length, offset + 8


def _implicit_element(data: bytes, offset: int) -> tuple[int, bytes, int, int]:
    group, element, length = _IMPLICIT_HEADER.unpack_from(data, offset)
    return group << 16 | element, b"", length, offset + 8


def _skip_undefined_sequence(data: bytes, offset: int, explicit: bool, depth: int) -> int:
    """Offset just after the Sequence Delimitation Item of a sequence starting at `offset`."""
    if depth > MAX_DEPTH:
        raise _Unsupported("sequences nested too deep")
    while True:
        group, element, length = struct.unpack_from("<HHI", data, offset)
        tag, offset = group << 16 | element, offset + 8
        if tag == SEQUENCE_END:
            return offset
        if tag != ITEM:
            raise _Unsupported("not an item inside a sequence")
        if length != UNDEFINED:
            if offset + length > len(data):
                raise DatasetTruncated("item runs past the end")
            offset += length
            continue
        while True:  # an item of undefined length: its elements up to the Item Delimitation Item
            tag, vr, length, value_start = (
                _explicit_element(data, offset) if explicit else _implicit_element(data, offset)
            )
            if tag == ITEM_END:
                offset = value_start
                break
            if length == UNDEFINED:
                offset = _skip_undefined_sequence(data, value_start, explicit and vr == b"SQ", depth + 1)
            elif value_start + length > len(data):
                raise DatasetTruncated("element runs past the end")
            else:
                offset = value_start + length
