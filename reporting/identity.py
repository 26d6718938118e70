"""The node's identity as a DICOM implementation (PS3.7 D.3.3.2-D.3.3.3, PS3.10 7.1).

The same Implementation Class UID and Implementation Version Name go into the A-ASSOCIATE-AC
the Store SCP answers, the A-ASSOCIATE-RQ its SCU sends, and the File Meta of every file the
node writes: the SEG, SR and key images, and each received instance in the spool (the File
Meta names the implementation that wrote the file, PS3.10 7.1; the sender is kept in Source
Application Entity Title). Neither pydicom's, highdicom's nor pynetdicom's identity is the
node's: a PACS administrator reading an association log must see who called.

The class UID is fixed: `2.25.` followed by the decimal value of UUID
3003d8f2-b7bc-4a9e-beb5-b92b9bb73b06, made once for ldct-node (PS3.5 B.2); it never changes.
The version name changes with each release.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version


def _package_version() -> str:
    try:
        return version("ldct-node")
    except PackageNotFoundError:  # not installed (source checkout): still a valid object
        return "0.0.0+unknown"


SOFTWARE_VERSION = _package_version()
IMPLEMENTATION_CLASS_UID = "2.25.63822920918804670829890687922630769414"


def _version_name(version: str) -> str:
    """`LDCT_NODE_0_1_0` for 0.1.0: at most 16 characters of the SH repertoire."""
    release = re.sub(r"[^0-9A-Za-z]+", "_", version.split("+")[0]).strip("_") or "0"
    return f"LDCT_NODE_{release}"[:16]


IMPLEMENTATION_VERSION_NAME = _version_name(SOFTWARE_VERSION)
