"""Which ImagingStudy resources, and so which patients, DICOM Study Instance UIDs belong to:
what a DICOMweb access is recorded as in the audit trail (BALP PatientRead/PatientQuery)."""
from __future__ import annotations

from sqlalchemy import and_, select

from ..auth.imaging import DICOM_UID_SYSTEM, OID_PREFIX
from ..search.tables import search_reference, search_token


def study_owners(conn, study_uids: list[str]) -> dict[str, list[tuple[str, str | None]]]:
    """Study UID -> [(ImagingStudy id, patient id or None)] of the live studies naming it."""
    out: dict[str, list[tuple[str, str | None]]] = {}
    tok, ref = search_token, search_reference
    for start in range(0, len(study_uids), 400):
        chunk = study_uids[start:start + 400]
        codes = chunk + [OID_PREFIX + uid for uid in chunk]
        query = select(tok.c.code, tok.c.res_id, ref.c.target_id).select_from(tok.outerjoin(ref, and_(
            ref.c.res_type == "ImagingStudy", ref.c.res_id == tok.c.res_id, ref.c.param == "subject",
            ref.c.target_type == "Patient"))).where(
            tok.c.res_type == "ImagingStudy", tok.c.param == "identifier", tok.c.system == DICOM_UID_SYSTEM,
            tok.c.code.in_(codes))
        for code, study_id, patient in conn.execute(query):
            uid = code[len(OID_PREFIX):] if code.startswith(OID_PREFIX) else code
            out.setdefault(uid, []).append((study_id, patient))
    return out
