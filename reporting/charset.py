"""Source headers as highdicom accepts them: one character set normalisation for every output.

A single-valued code-extension character set ("ISO 2022 IR 100") is valid DICOM and means the
same repertoire as its plain term ("ISO_IR 100"), but highdicom refuses it when it copies
patient and study attributes into a SEG, an SR or a secondary capture.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

SPECIFIC_CHARACTER_SET = 0x00080005

PLAIN_CHARACTER_SET = {
    "ISO 2022 IR 100": "ISO_IR 100",
    "ISO 2022 IR 101": "ISO_IR 101",
    "ISO 2022 IR 109": "ISO_IR 109",
    "ISO 2022 IR 110": "ISO_IR 110",
    "ISO 2022 IR 144": "ISO_IR 144",
    "ISO 2022 IR 148": "ISO_IR 148",
    "ISO 2022 IR 192": "ISO_IR 192",
}


def with_plain_character_set(source_datasets: Sequence[Dataset]) -> list[Dataset]:
    """The headers, those with a single-valued ISO 2022 character set replaced by copies
    that name its ISO_IR term. The caller's datasets are never changed (pydicom's
    `copy.copy` shares the element dictionary and its elements, so the copy gets its own
    dictionary and a new character set element)."""
    fixed = []
    for ds in source_datasets:
        charset = ds.get("SpecificCharacterSet")
        if isinstance(charset, str) and charset in PLAIN_CHARACTER_SET:
            copy = Dataset(dict(ds.items()))
            if hasattr(ds, "file_meta"):
                copy.file_meta = ds.file_meta
            # a new element: assigning the attribute would change the shared element's value
            copy[SPECIFIC_CHARACTER_SET] = DataElement(SPECIFIC_CHARACTER_SET, "CS", PLAIN_CHARACTER_SET[charset])
            fixed.append(copy)
        else:
            fixed.append(ds)
    return fixed
