"""Which ImagingStudy resources, and so which patients, DICOM Study Instance UIDs belong to:
what a DICOMweb access is recorded as in the audit trail (BALP PatientRead/PatientQuery)."""
from __future__ import annotations


from ..auth.imaging import DICOM_UID_SYSTEM, OID_PREFIX
from ..store import driver


def study_owners(conn, study_uids: list[str]) -> dict[str, list[tuple[str, str | None]]]:
    """Study UID -> [(ImagingStudy id, patient id or None)] of the live studies naming it.

    Prebuilt SQL on the driver's cursor (store.driver): every DICOMweb access asks it for its
    audit event, and through SQLAlchemy Core it cost 0.22 ms of a 2 ms metadata request."""
    out: dict[str, list[tuple[str, str | None]]] = {}
    mark = "?" if conn.dialect.name == "sqlite" else "%s"
    for start in range(0, len(study_uids), 400):
        chunk = study_uids[start:start + 400]
        codes = chunk + [OID_PREFIX + uid for uid in chunk]
        sql = OWNERS_SQL.format(mark=mark, codes=", ".join([mark] * len(codes)))
        for code, study_id, patient in driver.fetch_all(conn, sql, (DICOM_UID_SYSTEM, *codes)):
            uid = code[len(OID_PREFIX):] if code.startswith(OID_PREFIX) else code
            out.setdefault(uid, []).append((study_id, patient))
    return out


OWNERS_SQL = ("SELECT t.code, t.res_id, r.target_id FROM search_token t LEFT OUTER JOIN search_reference r "
              "ON r.res_type = 'ImagingStudy' AND r.res_id = t.res_id AND r.param = 'subject' "
              "AND r.target_type = 'Patient' WHERE t.res_type = 'ImagingStudy' AND t.param = 'identifier' "
              "AND t.system = {mark} AND t.code IN ({codes})")
