"""Capture's periodic tasks."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from capture.models import Contact, FormSubmission, Identity
from core.tasks import task


@task("capture.link_form_submissions", max_retries=0)
def link_form_submissions(session: Session) -> int:
    """Links accepted submissions that ingest could not link yet: the form endpoint queues the
    submission before its own transaction commits, so ingest can see the message first. The
    submission's anonymous id leads to the contact (following merges)."""
    owner = (
        select(Identity.contact_id)
        .where(Identity.kind == "anonymous", Identity.value == FormSubmission.anonymous_id)
        .scalar_subquery()
    )
    result = session.execute(
        update(FormSubmission)
        .where(
            FormSubmission.status == "accepted",
            FormSubmission.contact_id.is_(None),
            FormSubmission.anonymous_id.is_not(None),
            owner.is_not(None),
        )
        .values(contact_id=owner)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(FormSubmission)
        .where(FormSubmission.contact_id == Contact.id, Contact.merged_into_id.is_not(None))
        .values(contact_id=Contact.merged_into_id)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)
