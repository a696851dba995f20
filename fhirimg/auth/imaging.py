"""DICOMweb under the same decision as FHIR (SMART Imaging Access): a study's DICOM data is
reachable exactly when the ImagingStudy that names its Study Instance UID is.

QIDO-RS is a search of ImagingStudy (``s``), WADO-RS a read (``r``). A principal with
unrestricted access sees every stored study; a narrowed one only studies whose
ImagingStudy (``identifier`` ``urn:dicom:uid|urn:oid:<uid>``) it reaches, decided before
a single DICOM byte is sent, for the whole study at once.
"""
from __future__ import annotations

from sqlalchemy import func, select

from ..search.tables import search_token
from ..store.schema import resource_current
from .decision import Access, decide, reachable_ids
from .errors import Forbidden
from .principal import Principal

DICOM_UID_SYSTEM = "urn:dicom:uid"
OID_PREFIX = "urn:oid:"


def _uids_of(studies_condition):
    cur, tok = resource_current, search_token
    studies = select(cur.c.res_id).where(cur.c.res_type == "ImagingStudy", cur.c.is_deleted.is_(False),
                                         studies_condition)
    named = (tok.c.res_type == "ImagingStudy", tok.c.param == "identifier", tok.c.system == DICOM_UID_SYSTEM,
             tok.c.res_id.in_(studies))
    # Both forms a study may use (transfer/uids.py accepts either): urn:oid:1.2.3 and 1.2.3.
    return select(func.substr(tok.c.code, len(OID_PREFIX) + 1)).where(tok.c.code.like(OID_PREFIX + "%"), *named) \
        .union(select(tok.c.code).where(~tok.c.code.like(OID_PREFIX + "%"), *named))


def reachable_study_uids(access: Access):
    """A SELECT of the Study Instance UIDs all of whose ImagingStudies are within `access`, or
    None (all). "All": an identifier anyone with create can write must not open another
    patient's images - a UID that some ImagingStudy out of reach also names stays closed."""
    condition = access.condition()
    if condition is None:
        return None
    reached = _uids_of(condition).subquery()
    uid = reached.c[0]
    return select(uid).where(uid.not_in(_uids_of(~condition)))


def study_filter(principal: Principal, letter: str):
    """The condition QIDO applies to ``dicom_instance.study_uid`` (None: no limit); 403 if none."""
    return reachable_study_uids(decide(principal, letter, "ImagingStudy").require())


def require_study(conn, principal: Principal, letter: str, study_uid: str) -> None:
    """403 unless every ImagingStudy naming this Study Instance UID is within the token's reach."""
    access = decide(principal, letter, "ImagingStudy").require()
    if not access.is_narrowed:
        return
    tok = search_token
    named = [row.res_id for row in conn.execute(select(tok.c.res_id).where(
        tok.c.res_type == "ImagingStudy", tok.c.param == "identifier", tok.c.system == DICOM_UID_SYSTEM,
        tok.c.code.in_([OID_PREFIX + study_uid, study_uid])))]
    if not named or reachable_ids(conn, access, "ImagingStudy", named) != set(named):
        raise Forbidden(f"study {study_uid} is not within what the token may "
                        f"{'search' if letter == 's' else 'read'} (its ImagingStudy is outside the token's "
                        "patient, scopes or registered patients, or there is none)")
