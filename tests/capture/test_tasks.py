"""Capture's periodic tasks against the real databases."""

from __future__ import annotations

import uuid

from capture.models import Contact, Form, FormSubmission, Identity, Source
from capture.tasks import link_form_submissions
from core.db import session_scope


def test_submissions_ingest_could_not_link_are_linked_by_their_visitor(backend):
    with session_scope() as session:
        source = Source(name="s", write_key_hash=uuid.uuid4().hex, write_key_prefix="wk_x")
        session.add(source)
        session.flush()
        form = Form(source_id=source.id, name="demo")
        survivor = Contact(is_known=True)
        merged = Contact(is_known=False)
        session.add_all([form, survivor, merged])
        session.flush()
        merged.merged_into_id = survivor.id
        session.add(Identity(contact_id=survivor.id, kind="anonymous", value="visitor-1"))
        waiting = FormSubmission(form_id=form.id, status="accepted", anonymous_id="visitor-1")
        spam = FormSubmission(form_id=form.id, status="spam", anonymous_id="visitor-1")
        stale = FormSubmission(form_id=form.id, status="accepted", contact_id=merged.id)
        session.add_all([waiting, spam, stale])
        session.flush()
        ids = (waiting.id, spam.id, stale.id, survivor.id)

    assert link_form_submissions() == 1

    with session_scope() as session:
        waiting_id, spam_id, stale_id, survivor_id = ids
        assert session.get(FormSubmission, waiting_id).contact_id == survivor_id
        assert session.get(FormSubmission, spam_id).contact_id is None
        assert session.get(FormSubmission, stale_id).contact_id == survivor_id
