"""Which ImagingStudy resources, and so which patients, DICOM Study Instance UIDs belong to:
what a DICOMweb access is recorded as in the audit trail (BALP PatientRead/PatientQuery)."""
from __future__ import annotations

import functools

from sqlalchemy import and_, bindparam, select

from ..auth.imaging import DICOM_UID_SYSTEM, OID_PREFIX
from ..search.tables import search_reference, search_token


def study_owners(conn, study_uids: list[str]) -> dict[str, list[tuple[str, str | None]]]:
    """Study UID -> [(ImagingStudy id, patient id or None)] of the live studies naming it."""
    out: dict[str, list[tuple[str, str | None]]] = {}
    for start in range(0, len(study_uids), 400):
        chunk = study_uids[start:start + 400]
        codes = chunk + [OID_PREFIX + uid for uid in chunk]
        for code, study_id, patient in conn.execute(owners_statement(), {"codes": codes}):
            uid = code[len(OID_PREFIX):] if code.startswith(OID_PREFIX) else code
            out.setdefault(uid, []).append((study_id, patient))
    return out


@functools.cache
def owners_statement():
    """Built once: building it per request cost more than running it (every DICOMweb access
    asks it for its audit event)."""
    tok, ref = search_token, search_reference
    return select(tok.c.code, tok.c.res_id, ref.c.target_id).select_from(tok.outerjoin(ref, and_(
        ref.c.res_type == "ImagingStudy", ref.c.res_id == tok.c.res_id, ref.c.param == "subject",
        ref.c.target_type == "Patient"))).where(
        tok.c.res_type == "ImagingStudy", tok.c.param == "identifier", tok.c.system == DICOM_UID_SYSTEM,
        tok.c.code.in_(bindparam("codes", expanding=True)))
