"""A patient's compartment as SQL over the index tables: what "this patient's data" is.

Patient: itself. ImagingStudy: its ``subject``. Task: ``for`` the patient, or ``focus`` on one
of its studies. Endpoint: named by one of its studies (``ImagingStudy.endpoint``). Other
types are in no patient's compartment. Built on search_reference rows, which exist only for
live resources, so a condition here is also "and not deleted".
"""
from __future__ import annotations

from sqlalchemy import false, or_, select

from ..search.tables import search_reference


def patient_ids(patients: tuple[str, ...], organizations: tuple[str, ...]):
    """The patients named, and those whose managingOrganization is one named: a SELECT of ids
    or a list (None when neither limits anything)."""
    if not organizations:
        return list(patients) if patients else None
    ref = search_reference.alias()
    managed = select(ref.c.res_id).where(ref.c.res_type == "Patient", ref.c.param == "organization",
                                         ref.c.target_type == "Organization", ref.c.target_id.in_(organizations))
    if not patients:
        return managed
    return managed.union(select(ref.c.res_id).where(ref.c.res_type == "Patient", ref.c.res_id.in_(patients)))


def _studies_of(patients):
    ref = search_reference.alias()
    return select(ref.c.res_id).where(ref.c.res_type == "ImagingStudy", ref.c.param == "subject",
                                      ref.c.target_type == "Patient", ref.c.target_id.in_(patients))


def in_compartment(res_type: str, patients, cur):
    """The WHERE condition on `cur` (resource_current) for `res_type` rows in the compartment
    of `patients` (a list of ids or a SELECT of them)."""
    if res_type == "Patient":
        return cur.c.res_id.in_(patients)
    if res_type == "ImagingStudy":
        return cur.c.res_id.in_(_studies_of(patients))
    ref = search_reference.alias()
    if res_type == "Task":
        subject = select(ref.c.res_id).where(ref.c.res_type == "Task", ref.c.param == "subject",
                                             ref.c.target_type == "Patient", ref.c.target_id.in_(patients))
        focus = search_reference.alias()
        on_study = select(focus.c.res_id).where(focus.c.res_type == "Task", focus.c.param == "focus",
                                                focus.c.target_type == "ImagingStudy",
                                                focus.c.target_id.in_(_studies_of(patients)))
        return or_(cur.c.res_id.in_(subject), cur.c.res_id.in_(on_study))
    if res_type == "Endpoint":
        named = select(ref.c.target_id).where(ref.c.res_type == "ImagingStudy", ref.c.param == "endpoint",
                                              ref.c.target_type == "Endpoint",
                                              ref.c.res_id.in_(_studies_of(patients)))
        return cur.c.res_id.in_(named)
    return false()
