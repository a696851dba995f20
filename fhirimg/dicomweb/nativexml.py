"""DICOM JSON (PS3.18 F.2) as the Native DICOM Model XML of PS3.19 A.1 (application/dicom+xml).

QIDO-RS and metadata answers are kept as DICOM JSON; a client that asks for XML gets each
data set converted here, one part per data set (PS3.18 8.7.3.2: multipart/related;
type="application/dicom+xml").
"""
from __future__ import annotations

from xml.etree import ElementTree

from pydicom.datadict import keyword_for_tag

NAMESPACE = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
NAME_PARTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")


def native_xml(dataset: dict) -> bytes:
    """One data set as a NativeDicomModel document, UTF-8, with its XML declaration."""
    root = ElementTree.Element("NativeDicomModel", {"xmlns": NAMESPACE, "xml:space": "preserve"})
    add_attributes(root, dataset)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(root, encoding="utf-8",
                                                                               xml_declaration=False)


def add_attributes(parent: ElementTree.Element, dataset: dict) -> None:
    for tag in sorted(dataset):
        element = dataset[tag]
        attributes = {"tag": tag.upper(), "vr": element.get("vr", "UN")}
        private = int(tag[:4], 16) % 2 == 1
        keyword = keyword_for_tag(int(tag, 16)) if not private else ""
        if keyword:
            attributes["keyword"] = keyword
        creator = private_creator(dataset, tag) if private else None
        if creator:
            attributes["privateCreator"] = creator
        node = ElementTree.SubElement(parent, "DicomAttribute", attributes)
        add_value(node, element)


def add_value(node: ElementTree.Element, element: dict) -> None:
    vr = element.get("vr")
    if "BulkDataURI" in element:
        ElementTree.SubElement(node, "BulkData", {"uri": element["BulkDataURI"]})
    elif "InlineBinary" in element:
        ElementTree.SubElement(node, "InlineBinary").text = element["InlineBinary"]
    for number, value in enumerate(element.get("Value") or [], start=1):
        if vr == "SQ":
            item = ElementTree.SubElement(node, "Item", {"number": str(number)})
            add_attributes(item, value or {})
        elif vr == "PN":
            add_person_name(node, number, value or {})
        else:
            child = ElementTree.SubElement(node, "Value", {"number": str(number)})
            if value is not None:
                child.text = xml_text(str(value))


def add_person_name(node: ElementTree.Element, number: int, value: dict) -> None:
    """PS3.19 A.1.5: each representation split into its five components."""
    name = ElementTree.SubElement(node, "PersonName", {"number": str(number)})
    for group in ("Alphabetic", "Ideographic", "Phonetic"):
        if group not in value:
            continue
        representation = ElementTree.SubElement(name, group)
        for part, text in zip(NAME_PARTS, value[group].split("^")):
            if text:
                ElementTree.SubElement(representation, part).text = xml_text(text)


def private_creator(dataset: dict, tag: str) -> str | None:
    """The Private Creator of a private element (gggg,xxee is reserved by gggg,00xx: PS3.5
    7.8.1), which PS3.19 names in the privateCreator attribute."""
    group, element = tag[:4], int(tag[4:], 16)
    if element < 0x1000:
        return None
    values = (dataset.get(f"{group}00{element >> 8:02X}".upper()) or {}).get("Value") or []
    return str(values[0]) if values else None


XML_ILLEGAL = {c: "\ufffd" for c in range(0x20) if c not in (0x09, 0x0A, 0x0D)} | {0xFFFE: "\ufffd", 0xFFFF: "\ufffd"}


def xml_text(text: str) -> str:
    """Text XML 1.0 can hold: control characters (a form feed is legal in LT, ST, UT) become
    U+FFFD rather than making the document ill-formed."""
    return text.translate(XML_ILLEGAL)
