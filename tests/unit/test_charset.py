"""Single-valued ISO 2022 character sets: every output builds, and the sources stay as sent."""

from __future__ import annotations

from inference.quantify import quantify
from reporting.charset import with_plain_character_set
from reporting.key_images import build_key_images
from reporting.seg import build_segmentation
from reporting.sr import build_measurement_report
from tests.reporting_fixtures import headers_only, make_ct_series, make_hu_volume, make_label_map


def iso2022_headers(labels, hu):
    headers = headers_only(make_ct_series(hu=hu))
    for ds in headers:
        ds.SpecificCharacterSet = "ISO 2022 IR 100"
        ds.PatientName = "Gérard^Françoise"
    return headers


def test_copies_name_the_plain_term_and_the_sources_are_untouched():
    labels = make_label_map(4, 32)
    headers = iso2022_headers(labels, make_hu_volume(labels=labels))
    fixed = with_plain_character_set(headers)
    assert [ds.SpecificCharacterSet for ds in fixed] == ["ISO_IR 100"] * len(headers)
    assert [ds.SpecificCharacterSet for ds in headers] == ["ISO 2022 IR 100"] * len(headers)
    assert fixed[0].PatientName == headers[0].PatientName == "Gérard^Françoise"


def test_key_images_seg_and_sr_build_from_iso2022_sources_in_any_order():
    labels = make_label_map(16, 64)
    hu = make_hu_volume(labels=labels)
    headers = iso2022_headers(labels, hu)
    quant = quantify(labels, 0.7 * 0.7 * 2.5 / 1000)
    images = build_key_images(hu, labels, headers, quant, None)  # first, as the pipeline does
    seg = build_segmentation(headers, labels, algorithm_name="test", algorithm_version="1")
    sr = build_measurement_report(headers, seg, quant, algorithm_name="test", algorithm_version="1")
    assert images and str(images[0].PatientName) == "Gérard^Françoise"
    assert str(seg.PatientName) == str(sr.PatientName) == "Gérard^Françoise"
    assert headers[0].SpecificCharacterSet == "ISO 2022 IR 100"
