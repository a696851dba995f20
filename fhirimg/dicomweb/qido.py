"""QIDO-RS (PS3.18 §10.6): query parameters, matching and the attributes each level returns.

Matching follows PS3.4 C.2.2.2: single value (exact), UID list (comma-separated), wildcard
``*``/``?`` on string VRs, and ``a-b`` ranges on DA/TM/DT. An attribute the client names
that DICOM does not know is a 400, never silently ignored.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from fhirimg.errors import Invalid

from .index import SeriesSummary, StoredInstance, StudySummary

# The attributes each level returns by default (PS3.18 Table 10.6.3-3 to -5); a query of all
# series or all instances returns those of the levels above too (10.6.3.3.1).
STUDY_TAGS = ("00080005", "00080020", "00080030", "00080050", "00080056", "00080061", "00080090",
              "00080201", "00081030", "00100010", "00100020", "00100030", "00100040", "0020000D",
              "00200010", "00201206", "00201208")
SERIES_TAGS = ("00080005", "00080060", "00080201", "0008103E", "0020000D", "0020000E", "00200011",
               "00201209", "00400244", "00400245", "00400275")
INSTANCE_TAGS = ("00080005", "00080016", "00080018", "00080056", "00080201", "0020000D", "0020000E",
                 "00200013", "00280008", "00280010", "00280011", "00280100")
CONTROL_PARAMS = frozenset({"limit", "offset", "includefield", "fuzzymatching"})
MAX_LIMIT = 10_000
ALL_INSTANCES_MAX = 10_000  # an all-instances query without a limit answers at most this many
# ... and reads at most this many instances: a filter on an attribute the index has no column
# for (PatientName=zzz) would otherwise parse every instance held, at every request.
ALL_INSTANCES_SCANNED = 200_000
UID_COLUMNS = {"0020000D": "study_uid", "0020000E": "series_uid", "00080018": "sop_uid"}
RANGE_VRS = frozenset({"DA", "TM", "DT"})
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})


@dataclass
class Query:
    filters: list[tuple[str, str, str]] = field(default_factory=list)  # (tag, vr, value)
    include: set[str] = field(default_factory=set)
    include_all: bool = False
    limit: int | None = None
    offset: int = 0


def parse_query(args: list[tuple[str, str]]) -> Query:
    """The query string of a QIDO request; raises Invalid naming the bad parameter."""
    query = Query()
    for key, value in args:
        if key == "limit":
            query.limit = parse_count(key, value, 1, MAX_LIMIT)
        elif key == "offset":
            query.offset = parse_count(key, value, 0, 10**9)
        elif key == "includefield":
            for item in value.split(","):
                if item == "all":
                    query.include_all = True
                elif item:
                    query.include.add(tag_of(item, "includefield"))
        elif key == "fuzzymatching":
            continue  # optional in PS3.18; exact matching is a valid answer
        else:
            tag = tag_of(key, key)
            query.filters.append((tag, vr_of(tag), value))
    return query


def parse_count(key: str, value: str, low: int, high: int) -> int:
    if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
        raise Invalid(f"{key}={value!r} must be an integer from {low} to {high}", [key])
    return int(value)


def tag_of(name: str, where: str) -> str:
    """``PatientID`` or ``00100020`` → ``00100020``; nested sequence paths are not supported."""
    candidate = name.upper()
    if len(candidate) == 8 and all(c in "0123456789ABCDEF" for c in candidate):
        if keyword_for_tag(int(candidate, 16)) or int(candidate[:4], 16) % 2 == 1:
            return candidate
    tag = tag_for_keyword(name)
    if tag is None:
        raise Invalid(f"{name!r} is not a DICOM attribute keyword or tag (PS3.18 8.3.4)", [where])
    return f"{tag:08X}"


def vr_of(tag: str) -> str:
    try:
        return dictionary_VR(int(tag, 16))
    except KeyError:
        return "UN"


def values_of(attributes: dict, tag: str) -> list[str]:
    element = attributes.get(tag) or {}
    out = []
    for value in element.get("Value") or []:
        if isinstance(value, dict):  # PN: {"Alphabetic": "Doe^Jane"}
            value = value.get("Alphabetic", "")
        out.append(str(value))
    return out


def matches(attributes: dict, filters: list[tuple[str, str, str]]) -> bool:
    return all(value_matches(values_of(attributes, tag), vr, wanted) for tag, vr, wanted in filters)


def value_matches(values: list[str], vr: str, wanted: str) -> bool:
    if wanted == "" or wanted == "*":
        return True  # universal matching
    if vr == "UI":
        accepted = {uid.strip() for uid in wanted.split(",")}
        return any(v in accepted for v in values)
    if vr in RANGE_VRS and "-" in wanted:
        low, _, high = wanted.partition("-")
        return any((not low or v >= low) and (not high or v <= high) for v in values)
    if vr == "PN":
        return any(person_name_matches(v, wanted) for v in values)
    if vr in WILDCARD_VRS and ("*" in wanted or "?" in wanted):
        pattern = wanted.replace("[", "[[]")
        return any(fnmatch.fnmatchcase(v, pattern) for v in values)
    return any(v == wanted for v in values)


def person_name_matches(value: str, wanted: str) -> bool:
    """PN matching is case-insensitive, with or without wildcards (PS3.4 C.2.2.2.1 leaves
    case to the implementation; Orthanc and dcm4chee ignore it, and OHIF's study list sends
    what the user typed, lower case). ``fuzzymatching=true`` adds nothing more: names are
    not matched phonetically. ``^`` separates components; trailing empty components are
    not significant (``Doe^Jane^^^`` is ``Doe^Jane``)."""
    value, wanted = value.rstrip("^").casefold(), wanted.casefold()
    if "*" in wanted or "?" in wanted:
        return fnmatch.fnmatchcase(value, wanted.replace("[", "[[]"))
    return value == wanted.rstrip("^")


def study_attributes(study: StudySummary, retrieve_url: str) -> dict:
    attributes = dict(study.attributes)
    modalities = sorted({m for s in study.series for m in values_of(s.attributes, "00080060")})
    attributes["00080061"] = {"vr": "CS", "Value": modalities} if modalities else {"vr": "CS"}
    attributes["00201206"] = {"vr": "IS", "Value": [len(study.series)]}
    attributes["00201208"] = {"vr": "IS", "Value": [study.instance_count]}
    attributes["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
    attributes["00081190"] = {"vr": "UR", "Value": [retrieve_url]}
    return attributes


def series_attributes(series: SeriesSummary, retrieve_url: str) -> dict:
    attributes = dict(series.attributes)
    attributes["00201209"] = {"vr": "IS", "Value": [series.instance_count]}
    attributes["00081190"] = {"vr": "UR", "Value": [retrieve_url]}
    return attributes


def instance_attributes(instance: StoredInstance, retrieve_url: str) -> dict:
    attributes = dict(instance.attributes)
    attributes["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
    attributes["00081190"] = {"vr": "UR", "Value": [retrieve_url]}
    return attributes


def select_fields(attributes: dict, level_tags: tuple[str, ...], query: Query) -> dict:
    """The level's default return attributes, the matched ones and those of includefield."""
    if query.include_all:
        # Bulk values are named only in metadata (with their instance's URL), and the
        # File Meta group is not part of the data set.
        return {tag: element for tag, element in sorted(attributes.items())
                if element.get("BulkDataURI") != "" and not tag.startswith("0002")}
    wanted = set(level_tags) | query.include | {tag for tag, _, _ in query.filters} | {"00081190", "00080056"}
    return {tag: attributes[tag] for tag in sorted(wanted) if tag in attributes}


def page(results: list, query: Query) -> list:
    end = None if query.limit is None else query.offset + query.limit
    return results[query.offset:end]
