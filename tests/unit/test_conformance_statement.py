"""docs/conformance-statement.md says what the code does: its *(checked)* tables against the code.

The Store SCP's accepted presentation contexts come from a real StoreSCP; the contexts the SCU
proposes are captured by a pynetdicom SCP while the dispatcher's DIMSE sender sends real
outputs of the pipeline (and `echo` echoes); status codes, identity, decodable transfer
syntaxes and codes come from the modules that define them. A change on either side without the
other fails here. A table row may stand for every storage SOP class of pynetdicom by naming
its list (`AllStoragePresentationContexts`, with pynetdicom's version) instead of 100+ UIDs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pynetdicom
import pytest
from highdicom.sr import CodedConcept
from pydicom.pixels.decoders.base import get_decoder
from pydicom.sr.coding import Code
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt

import reporting.codes
from config.settings import DimseDestination
from dicom_node.dispatch import dimse
from dicom_node.dispatch.dispatcher import sender_for
from dicom_node.receive import acceptor
from dicom_node.receive.spool import Spool
from dicom_node.receive.store_scp import StoreSCP
from dicom_node.work.pipeline import ReportOptions, analyse_series
from inference.engines import get_engine
from inference.synthetic import generate_phantom, write_series
from reporting.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from tests.node_fixtures import node_settings

STATEMENT = Path(__file__).resolve().parents[2] / "docs" / "conformance-statement.md"
VERIFICATION = "1.2.840.10008.1.1"
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)+$")


def table(caption: str) -> list[dict[str, str]]:
    """The rows (header -> cell) of the first table after the line that holds `caption`."""
    lines = STATEMENT.read_text(encoding="utf-8").splitlines()
    start = next((i for i, line in enumerate(lines) if caption in line), None)
    assert start is not None, f"no {caption!r} in the conformance statement"
    rows: list[list[str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    header, _separator, *body = rows
    return [dict(zip(header, row, strict=True)) for row in body]


def uid(cell: str) -> str:
    value = cell.strip("` ")
    assert UID_PATTERN.match(value), f"{cell!r} is not a UID"
    return value


def sop_classes(row: dict[str, str], name_column: str, uid_column: str) -> set[str]:
    """The SOP classes one row stands for: its UID, or the classes of one of pynetdicom's
    context lists named in its place (`StoragePresentationContexts`, `AllStoragePresentationContexts`)."""
    listed = getattr(pynetdicom, row[uid_column].strip("` "), None)
    if isinstance(listed, list):
        assert f"pynetdicom {pynetdicom.__version__}" in row[name_column], "name the pynetdicom version"
        return {str(cx.abstract_syntax) for cx in listed}
    value = uid(row[uid_column])
    assert row[name_column] == UID(value).name, f"{value} is {UID(value).name!r}, not {row[name_column]!r}"
    return {value}


def pairs(rows: list[dict[str, str]]) -> set[tuple[str, str]]:
    """(abstract syntax, transfer syntax) of a presentation context table, names checked."""
    found = set()
    for row in rows:
        abstract, syntax = uid(row["abstract syntax UID"]), uid(row["transfer syntax UID"])
        assert row["abstract syntax"] == UID(abstract).name
        assert row["transfer syntax"] == UID(syntax).name
        found.add((abstract, syntax))
    return found


@pytest.fixture(scope="module")
def accepted(tmp_path_factory) -> dict[str, tuple[str, ...]]:
    """Abstract syntax -> transfer syntaxes, as the node's Store SCP negotiates them."""
    scp = StoreSCP(ae_title="LDCTNODE", spool=Spool(tmp_path_factory.mktemp("spool")))
    return dict(scp.acceptor.supported)


@pytest.fixture(scope="module")
def proposed(tmp_path_factory) -> dict[str, set[tuple[str, str]]]:
    """What the SCU proposes: sending a job's real outputs the dispatcher's way, and C-ECHO."""
    folder = tmp_path_factory.mktemp("conformance")
    series = write_series(generate_phantom(shape=(24, 96, 96), spacing=(8.0, 3.5, 3.5), seed=5), folder / "ct")
    summary = analyse_series(series, folder / "out", engine=get_engine("threshold", "cpu"), options=ReportOptions())
    outputs = [folder / "out" / name for name in summary.outputs]
    requested: list[set[tuple[str, str]]] = []

    def on_requested(event) -> None:
        contexts = event.assoc.requestor.requested_contexts
        requested.append({(str(cx.abstract_syntax), str(ts)) for cx in contexts for ts in cx.transfer_syntax})

    ae = AE("CAPTURE")
    for context in StoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(VERIFICATION, ALL_TRANSFER_SYNTAXES)
    server = ae.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[(evt.EVT_REQUESTED, on_requested), (evt.EVT_C_STORE, lambda event: 0x0000)],
    )
    try:
        port = server.server_address[1]
        destination = DimseDestination(name="capture", ae_title="CAPTURE", host="127.0.0.1", port=port)
        result = sender_for(node_settings(folder / "data"), destination)(outputs)
        assert result.ok and result.sent == len(outputs) >= 3
        dimse.echo("127.0.0.1", port, "CAPTURE")
    finally:
        server.shutdown()
    results, verification = requested
    return {"results": results, "verification": verification}


def test_network_services_overview(accepted, proposed):
    rows = table("Table 1-1. Network services")
    scp = set().union(
        *(
            sop_classes(r, "SOP class", "SOP class UID")
            for r in rows
            if r["provider of service (SCP)"].startswith("Yes")
        )
    )
    scu = set().union(
        *(sop_classes(r, "SOP class", "SOP class UID") for r in rows if r["user of service (SCU)"] == "Yes")
    )
    assert scp == set(accepted)
    assert scu == {abstract for abstract, _ in proposed["results"] | proposed["verification"]}


def test_storage_sop_classes_and_transfer_syntaxes_accepted(accepted):
    classes = set().union(
        *(sop_classes(r, "SOP class", "UID") for r in table("Table 4.2-5. Accepted storage SOP classes"))
    )
    assert classes == set(accepted) - {VERIFICATION}
    syntaxes = table("Table 4.2-6. Transfer syntaxes accepted for storage")
    for row in syntaxes:
        assert row["transfer syntax"] == UID(uid(row["UID"])).name
    documented = {uid(row["UID"]) for row in syntaxes}
    for sop_class in classes:
        assert set(accepted[sop_class]) == documented, UID(sop_class).name


def test_verification_contexts_accepted(accepted):
    rows = table("Table 4.2-8. Accepted presentation contexts: Verification")
    assert pairs(rows) == {(VERIFICATION, syntax) for syntax in accepted[VERIFICATION]}
    assert {row["role"] for row in rows} == {"SCP"}


def test_decoded_column_says_which_transfer_syntaxes_the_segmentation_reads():
    def decodable(syntax: str) -> bool:
        try:
            return bool(get_decoder(syntax).is_available)
        except NotImplementedError:
            return False

    for row in table("Table 4.2-6. Transfer syntaxes accepted for storage"):
        assert row["decoded"] == ("yes" if decodable(uid(row["UID"])) else "no"), row["transfer syntax"]


def test_contexts_proposed_for_results_and_for_echo(proposed):
    assert pairs(table("Table 4.2-1. Proposed presentation contexts: send results")) == proposed["results"]
    assert pairs(table("Table 4.2-3. Proposed presentation contexts: verify destination")) == proposed["verification"]


def test_status_codes_returned_by_the_storage_scp():
    documented = {int(row["status"], 16) for row in table("Table 4.2-7. Status codes the Storage SCP returns")}
    returned = {value for name, value in vars(acceptor).items() if name.startswith("STATUS_")}
    assert documented == returned


def test_c_store_responses_counted_as_stored_by_the_scu():
    rows = table("Table 4.2-2. C-STORE response status handling (SCU)")
    documented = {int(row["status"], 16) for row in rows if row["status"].startswith("0x")}
    assert documented == set(dimse.STORED_STATUSES)
    assert all(row["behaviour"] == "instance counted as sent" for row in rows if row["status"].startswith("0x"))


def test_implementation_identifying_information():
    values = {row[""]: row["value"].strip("`") for row in table("Implementation identifying information")}
    assert values == {
        "Implementation Class UID": IMPLEMENTATION_CLASS_UID,
        "Implementation Version Name": IMPLEMENTATION_VERSION_NAME,
    }


def test_codes_are_the_ones_the_outputs_use():
    documented = {
        (row["coding scheme"], row["code value"], row["code meaning"]) for row in table("Table 8.3-1. Codes used")
    }
    defined = {
        (code.scheme_designator, code.value, code.meaning)
        for code in vars(reporting.codes).values()
        if isinstance(code, Code | CodedConcept)
    }
    assert documented == defined
