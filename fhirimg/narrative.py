"""The narrative rules of narrative.html: txt-1 (only basic XHTML formatting elements and
attributes: no scripts, forms, frames, event handlers or javascript: URLs) and txt-2 (some
non-whitespace content). A Patient whose text.div held <script> was stored and served back
to every viewer that renders the narrative: stored active content."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree

from .errors import Issue

XHTML = "{http://www.w3.org/1999/xhtml}"
# HTML 4.0 chapters 7-11 and 15 (minus forms), <a>, images - the elements FHIR allows.
ELEMENTS = frozenset("""a abbr acronym address b bdo big blockquote br caption cite code col colgroup dd del dfn
div dl dt em h1 h2 h3 h4 h5 h6 hr i img ins kbd li map area ol p pre q samp small span strong sub sup table
tbody td tfoot th thead tr tt u ul var""".split())
ATTRIBUTES = frozenset("""abbr accesskey align alt axis bgcolor border cellpadding cellspacing char charoff
class colspan compact cite datetime dir headers height href hreflang id lang name nowrap rel rev rowspan rules
scope shape coords span src start style summary tabindex title type valign value width""".split())
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
SAFE_URL = re.compile(r"^(https?:|mailto:|#|/|\.|[^:]*$|data:image/(png|gif|jpeg|webp);)", re.I)
DANGEROUS_STYLE = re.compile(r"expression\s*\(|url\s*\(\s*['\"]?\s*javascript:|behavior\s*:|-moz-binding", re.I)


def narrative_issues(resource: dict, res_type: str) -> list[Issue]:
    """Issues of the resource's text.div and of its contained resources' (none when absent)."""
    issues = []
    div = (resource.get("text") or {}).get("div") if isinstance(resource.get("text"), dict) else None
    if isinstance(div, str):
        issues += [Issue("invalid", text, [f"{res_type}.text.div"]) for text in div_problems(div)]
    for index, contained in enumerate(resource.get("contained") or []):
        if isinstance(contained, dict):
            where = f"{res_type}.contained[{index}]"
            issues += [Issue(i.code, i.diagnostics, [e.replace(contained.get("resourceType", ""), where, 1)
                                                      for e in i.expression])
                       for i in narrative_issues(contained, contained.get("resourceType", ""))]
    return issues


def div_problems(div: str) -> list[str]:
    if "<!DOCTYPE" in div or "<!ENTITY" in div:
        return ["the narrative may not declare a DOCTYPE or entities"]
    try:
        root = ElementTree.fromstring(div)
    except ElementTree.ParseError as exc:
        return [f"the narrative is not well-formed XHTML: {exc}"]
    if root.tag != XHTML + "div":
        return ['the narrative must be a <div xmlns="http://www.w3.org/1999/xhtml"> (txt-3)']
    problems = []
    for element in root.iter():
        problems += element_problems(element)
        if len(problems) >= 10:
            break
    if not problems and not "".join(root.itertext()).strip() and root.find(f".//{XHTML}img") is None:
        problems.append("the narrative has no content (txt-2: some non-whitespace content)")
    return problems


def element_problems(element) -> list[str]:
    if not isinstance(element.tag, str) or not element.tag.startswith(XHTML):
        return [f"element {element.tag!r} is not XHTML"]
    name = element.tag[len(XHTML):]
    if name not in ELEMENTS:
        return [f"element <{name}> is not allowed in a narrative (txt-1)"]
    problems = []
    for attribute, value in element.attrib.items():
        if attribute == XML_LANG:
            continue
        if attribute not in ATTRIBUTES:
            problems.append(f"attribute {attribute!r} of <{name}> is not allowed in a narrative (txt-1)")
        elif attribute in ("href", "src", "cite") and not SAFE_URL.match(value.strip()):
            problems.append(f"<{name} {attribute}> may only be an http(s), mailto, relative or #fragment URL")
        elif attribute == "style" and DANGEROUS_STYLE.search(value):
            problems.append(f"the style of <{name}> holds active content")
    return problems
