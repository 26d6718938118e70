"""What the Store SCP accepts and what the node analyses: the one place for both lists.

A PACS that routes a study sends all of it: CT series in several reconstructions, localizers,
dose reports, dose screens, presentation states. A sender that cannot negotiate a context for
one of them (Orthanc: "Cannot transcode ... to one of [ ]") fails the whole transfer, so the
node accepts every storage SOP class pynetdicom knows (`AllStoragePresentationContexts`, PS3.4
annex B) in every transfer syntax pynetdicom names (`ALL_TRANSFER_SYNTAXES`): it keeps the bytes
it receives, so it needs no codec to accept them. Only `ANALYSED_SOP_CLASSES` go on to
segmentation; every other instance is acknowledged with success and its series recorded as
"not processed: <what it is>" (`not_processed_reason`).
"""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.uid import UID, CTImageStorage, EnhancedCTImageStorage
from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, VerificationPresentationContexts
from pynetdicom.presentation import PresentationContext, build_context

ANALYSED_SOP_CLASSES = frozenset({str(CTImageStorage)})
STORAGE_SOP_CLASSES: tuple[str, ...] = tuple(str(context.abstract_syntax) for context in AllStoragePresentationContexts)
TRANSFER_SYNTAXES: tuple[str, ...] = tuple(str(syntax) for syntax in ALL_TRANSFER_SYNTAXES)

_WHY_NOT = {
    str(EnhancedCTImageStorage): "multi-frame; send CT Image Storage to have it analysed",
}


def presentation_contexts() -> list[PresentationContext]:
    """Verification, then every storage SOP class with every transfer syntax (in
    `TRANSFER_SYNTAXES` order of preference)."""
    return list(VerificationPresentationContexts) + [
        build_context(sop_class, list(TRANSFER_SYNTAXES)) for sop_class in STORAGE_SOP_CLASSES
    ]


def is_analysed(sop_class_uid: str) -> bool:
    return sop_class_uid in ANALYSED_SOP_CLASSES


def sop_class_name(sop_class_uid: str) -> str:
    """The standard's name without "Storage" ("X-Ray Radiation Dose SR" for
    1.2.840.10008.5.1.4.1.1.88.67); the UID itself when pydicom has no name for it."""
    name = UID(sop_class_uid).name
    return name.replace(" Storage", "") if name != sop_class_uid else sop_class_uid


def not_processed_reason(sop_class_uids: Iterable[str]) -> str:
    """The recorded reason for instances of classes the node does not analyse, e.g.
    "not processed: X-Ray Radiation Dose SR"."""
    names = []
    for uid in sorted(set(sop_class_uids)):
        why = _WHY_NOT.get(uid)
        names.append(f"{sop_class_name(uid)} ({why})" if why else sop_class_name(uid))
    return "not processed: " + ", ".join(names)
