"""Forms: marketers define them (checked field by field), the public side renders and accepts
them, a valid submission becomes one queued identify + form_submitted that ingest turns into a
contact with consent, and bad or spam submissions store nothing or only spam."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from capture.forms import pattern_problem
from capture.models import ConsentRecord, Contact, Event, Form, FormSubmission
from capture.queue import get_queue
from capture.sources import create_source
from core import db
from core.keys import Role
from tests.conftest import Backend, drain, make_key, reset_caches

SITE = "https://www.example.com"
PAGE = "https://www.example.com/pricing?utm_source=baidu"
EMAIL_CONSENT = "I agree to receive product news by email. 我同意接收邮件。"
SMS_CONSENT = "I agree to receive offers by SMS; reply TD to stop."
VISITOR = "3f0c9d4e-7a61-4a8e-9f0e-2d6f1b9c8a11"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_source(origins: tuple[str, ...] = (SITE,)) -> uuid.UUID:
    with db.session_scope() as session:
        source, _key = create_source(session, "site", list(origins))
        return source.id


def definition(source_id: uuid.UUID, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "source_id": str(source_id),
        "name": "Demo request",
        "fields": [
            {
                "name": "email",
                "label": "Work email",
                "type": "email",
                "required": True,
                "maps_to": "email",
            },
            {"name": "phone", "label": "Mobile", "type": "phone", "maps_to": "phone"},
            {
                "name": "first_name",
                "label": "First name",
                "required": True,
                "maps_to": "first_name",
                "max_length": 40,
            },
            {
                "name": "company_size",
                "label": "Company size",
                "type": "select",
                "options": ["1-10", "11-200", "200+"],
                "maps_to": "company_size",
            },
            {"name": "order_code", "label": "Order code", "pattern": r"^[A-Z]{2}\d{4}$"},
            {"name": "seats", "label": "Seats", "type": "number", "maps_to": "seats"},
            {"name": "campaign", "type": "hidden", "default": "spring", "maps_to": "campaign"},
        ],
        "consents": [
            {"channel": "email", "text": EMAIL_CONSENT, "required": True},
            {"channel": "sms", "text": SMS_CONSENT, "required": False},
        ],
        "honeypot_field": "website_url",
        "success_message": "Thanks, we will call you.",
    }
    return {**body, **overrides}


@pytest.fixture
def marketer(backend: Backend) -> dict[str, str]:
    return bearer(make_key(Role.marketer))


@pytest.fixture
def form_id(client: TestClient, marketer: dict[str, str]) -> str:
    response = client.post("/api/v1/forms", json=definition(make_source()), headers=marketer)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def valid_submission(**overrides: Any) -> dict[str, Any]:
    body = {
        "email": "  Ann.Lee@Example.COM ",
        "phone": "138 0013 8000",
        "first_name": "Ann",
        "company_size": "11-200",
        "seats": "25",
        "consent_email": True,
        "consent_sms": False,
        "website_url": "",
        "nurture_aid": VISITOR,
        "page_url": PAGE,
    }
    return {**body, **overrides}


def queued() -> list[list[dict[str, Any]]]:
    return [orjson.loads(payload) for _id, payload in get_queue().take("test", 100, 0)]


def submissions() -> list[FormSubmission]:
    with db.session_scope() as session:
        return list(session.scalars(select(FormSubmission).order_by(FormSubmission.id)))


def assert_error(response: Any, status: int, *fields: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] and error["message"]
    for field in fields:
        assert field in error["fields"], error
    return error


def assert_nothing_stored() -> None:
    assert submissions() == []
    assert get_queue().depth() == 0


# The admin API


def test_marketer_defines_reads_lists_updates_and_archives_a_form(
    client: TestClient, marketer: dict[str, str]
) -> None:
    source_id = make_source()
    created = client.post("/api/v1/forms", json=definition(source_id), headers=marketer)
    assert created.status_code == 201, created.text
    form = created.json()
    assert form["name"] == "Demo request"
    assert [f["name"] for f in form["fields"]][:3] == ["email", "phone", "first_name"]
    assert form["consents"][0] == {"channel": "email", "text": EMAIL_CONSENT, "required": True}
    assert form["embed"]["script_url"].endswith(f"/v1/forms/{form['id']}/embed.js")
    assert f'data-nurture-form="{form["id"]}"' in form["embed"]["html"]

    fetched = client.get(f"/api/v1/forms/{form['id']}", headers=marketer)
    assert fetched.json() == form
    listed = client.get("/api/v1/forms", params={"source_id": str(source_id)}, headers=marketer)
    assert [f["id"] for f in listed.json()["items"]] == [form["id"]]

    patched = client.patch(
        f"/api/v1/forms/{form['id']}",
        json={"name": "Book a demo", "redirect_url": "https://www.example.com/thanks"},
        headers=marketer,
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["name"] == "Book a demo"
    assert patched.json()["fields"] == form["fields"]

    archived = client.delete(f"/api/v1/forms/{form['id']}", headers=marketer)
    assert archived.status_code == 200
    assert archived.json()["archived_at"] is not None
    assert client.get("/api/v1/forms", headers=marketer).json()["items"] == []
    with_archived = client.get("/api/v1/forms?include_archived=true", headers=marketer)
    assert len(with_archived.json()["items"]) == 1
    assert client.get(f"/v1/forms/{form['id']}/embed.js").status_code == 404
    assert client.post(f"/v1/forms/{form['id']}/submit", json=valid_submission()).status_code == 404


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["fields"][2].update(type="date"), "fields.2.type"),
        (lambda d: d["fields"][3].pop("options"), "fields.3.options"),
        (lambda d: d["fields"][0].update(options=["a"]), "fields.0.options"),
        (lambda d: d["fields"][1].update(name="email"), "fields.1.name"),
        (lambda d: d["fields"][1].update(name="consent_sms"), "fields.1.name"),
        (lambda d: d["fields"][1].update(name="Bad Name"), "fields.1.name"),
        (lambda d: d["fields"][2].update(maps_to="email"), "fields.2.maps_to"),
        (lambda d: d["fields"][1].update(maps_to="email"), "fields.1.maps_to"),
        (lambda d: d["fields"][4].update(pattern="(a+)+$"), "fields.4.pattern"),
        (lambda d: d["fields"][4].update(pattern="(unclosed"), "fields.4.pattern"),
        (lambda d: d["fields"][0].update(pattern="^a$"), "fields.0.pattern"),
        (lambda d: d["fields"][3].update(max_length=5), "fields.3.max_length"),
        (lambda d: d["fields"][0].update(colour="red"), "fields.0.colour"),
        (lambda d: d["consents"][1].update(channel="email"), "consents.1.channel"),
        (lambda d: d["consents"][1].update(channel="fax"), "consents.1.channel"),
        (lambda d: d["consents"][0].update(text=""), "consents.0.text"),
        (lambda d: d.update(redirect_url="javascript:alert(1)"), "redirect_url"),
        (lambda d: d.update(honeypot_field="email"), "fields.0.name"),
        (lambda d: d.update(fields=[]), "fields"),
        (lambda d: d.update(source_id=str(uuid.uuid4())), "source_id"),
    ],
)
def test_bad_definitions_are_422_naming_the_field(
    client: TestClient, marketer: dict[str, str], change: Any, field: str
) -> None:
    body = definition(make_source())
    change(body)

    response = client.post("/api/v1/forms", json=body, headers=marketer)

    assert_error(response, 422, field)
    with db.session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Form)) == 0


def test_patch_that_breaks_the_definition_changes_nothing(
    client: TestClient, marketer: dict[str, str], form_id: str
) -> None:
    before = client.get(f"/api/v1/forms/{form_id}", headers=marketer).json()
    fields = before["fields"] + [{"name": "email", "type": "text"}]

    for body, field in (
        ({"fields": fields}, "fields.7.name"),
        ({"name": None}, "name"),
        (
            {"consents": [{"channel": "sms", "text": "x"}, {"channel": "sms", "text": "y"}]},
            "consents.1.channel",
        ),
    ):
        assert_error(
            client.patch(f"/api/v1/forms/{form_id}", json=body, headers=marketer), 422, field
        )

    assert client.get(f"/api/v1/forms/{form_id}", headers=marketer).json() == before


def test_only_marketers_and_admins_manage_forms(
    client: TestClient, form_id: str, write_key: str
) -> None:
    rep = bearer(make_key(Role.rep))
    admin = bearer(make_key(Role.admin))

    assert_error(client.get("/api/v1/forms", headers=rep), 403)
    assert_error(client.patch(f"/api/v1/forms/{form_id}", json={"name": "x"}, headers=rep), 403)
    assert_error(client.delete(f"/api/v1/forms/{form_id}", headers=rep), 403)
    assert_error(client.get("/api/v1/forms"), 401)
    assert_error(client.get("/api/v1/forms", headers=bearer(write_key)), 401)
    assert client.get(f"/api/v1/forms/{form_id}", headers=admin).status_code == 200
    assert_error(client.get(f"/api/v1/forms/{uuid.uuid4()}", headers=admin), 404)


@pytest.mark.parametrize(
    "pattern",
    [r"(a+)+$", r"(a|ab)*c", r"(\w+\s?)*$", r"^\d+\d+$", r"(x+x+)+y", r"(.*a){12}", r"(a)\1"],
)
def test_patterns_open_to_catastrophic_backtracking_are_refused(pattern: str) -> None:
    assert pattern_problem(pattern) is not None


@pytest.mark.parametrize(
    "pattern",
    [
        r"^[A-Z]{2}\d{6}$",
        r"^1[3-9]\d{9}$",
        r"^\d+(\.\d+)*$",
        r"(\d{1,3}\.){3}\d{1,3}",
        r"^[a-z]+@[a-z]+\.[a-z]+$",
        r"^(?:com|cn|net)$",
        r"(foo|bar)+",
        r"^[\u4e00-\u9fa5]{2,10}$",
    ],
)
def test_ordinary_patterns_are_accepted(pattern: str) -> None:
    assert pattern_problem(pattern) is None


# The public side


def test_embed_script_renders_the_public_definition_only(client: TestClient, form_id: str) -> None:
    response = client.get(f"/v1/forms/{form_id}/embed.js")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/javascript")
    script = response.text
    assert "__NURTURE_FORM__" not in script
    assert f'"submit_url":"http://testserver/v1/forms/{form_id}/submit"' in script
    assert EMAIL_CONSENT in script and SMS_CONSENT in script
    assert '"honeypot_field":"website_url"' in script
    assert '"Work email"' in script
    assert '"order_code"' in script
    assert "maps_to" not in script and "^[A-Z]{2}" not in script

    page = client.get(f"/v1/forms/{form_id}")
    assert page.status_code == 200
    assert f'<div data-nurture-form="{form_id}">' in page.text
    assert client.get(f"/v1/forms/{uuid.uuid4()}/embed.js").status_code == 404


def test_valid_submission_is_stored_and_queued_as_identify_and_form_submitted(
    client: TestClient, form_id: str
) -> None:
    response = client.post(
        f"/v1/forms/{form_id}/submit",
        json=valid_submission(),
        headers={"Origin": SITE, "User-Agent": "Mozilla/5.0 test"},
    )

    assert response.status_code == 200, response.text
    assert response.json() == {
        "success": True,
        "message": "Thanks, we will call you.",
        "redirect_url": None,
    }
    assert response.headers["access-control-allow-origin"] == SITE
    [submission] = submissions()
    assert submission.status == "accepted"
    assert submission.contact_id is None
    assert submission.anonymous_id == VISITOR
    assert submission.page_url == PAGE
    assert submission.data["email"] == "ann.lee@example.com"
    assert submission.data["consent_email"] is True and submission.data["consent_sms"] is False

    [[identify, track]] = queued()
    assert identify["type"] == "identify" and track["type"] == "track"
    assert identify["anonymousId"] == track["anonymousId"] == VISITOR
    assert identify["traits"] == {
        "email": "ann.lee@example.com",
        "phone": "+8613800138000",
        "first_name": "Ann",
        "company_size": "11-200",
        "seats": 25,
        "campaign": "spring",
    }
    assert identify["consents"] == [
        {
            "channel": "email",
            "granted": True,
            "text": EMAIL_CONSENT,
            "formId": form_id,
            "pageUrl": PAGE,
        },
        {
            "channel": "sms",
            "granted": False,
            "text": SMS_CONSENT,
            "formId": form_id,
            "pageUrl": PAGE,
        },
    ]
    assert identify["formSubmissionId"] == submission.id
    assert track["event"] == "form_submitted"
    assert track["properties"] == {
        "form_id": form_id,
        "form_name": "Demo request",
        "submission_id": submission.id,
    }
    assert track["context"]["page"]["url"] == PAGE
    assert track["userAgent"] == "Mozilla/5.0 test"
    assert identify["sourceId"] == track["sourceId"]
    assert identify["messageId"] != track["messageId"]


def test_visitor_id_comes_from_the_cookie_or_is_new(client: TestClient, form_id: str) -> None:
    without_id = {k: v for k, v in valid_submission().items() if k != "nurture_aid"}

    client.cookies.set("nurture_aid", "cookie-visitor")
    assert client.post(f"/v1/forms/{form_id}/submit", json=without_id).status_code == 200
    client.cookies.clear()
    assert client.post(f"/v1/forms/{form_id}/submit", json=without_id).status_code == 200

    first, second = queued()
    assert {envelope["anonymousId"] for envelope in first} == {"cookie-visitor"}
    fresh = {envelope["anonymousId"] for envelope in second}
    assert len(fresh) == 1
    assert uuid.UUID(fresh.pop()).version == 4


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        ({"email": "not-an-email"}, ["email"]),
        ({"email": ""}, ["email"]),
        ({"phone": "12345"}, ["phone"]),
        ({"first_name": "x" * 41}, ["first_name"]),
        ({"company_size": "5000"}, ["company_size"]),
        ({"order_code": "ab12"}, ["order_code"]),
        ({"seats": "many"}, ["seats"]),
        ({"seats": "nan"}, ["seats"]),
        ({"first_name": ["Ann", "Bob"]}, ["first_name"]),
        ({"consent_email": False}, ["consent_email"]),
        ({"consent_sms": "maybe"}, ["consent_sms"]),
        (
            {"email": "bad", "consent_email": None, "first_name": None},
            ["email", "consent_email", "first_name"],
        ),
    ],
)
def test_invalid_submission_is_422_per_field_and_stores_nothing(
    client: TestClient, form_id: str, overrides: dict[str, Any], fields: list[str]
) -> None:
    response = client.post(f"/v1/forms/{form_id}/submit", json=valid_submission(**overrides))

    error = assert_error(response, 422, *fields)
    assert set(error["fields"]) == set(fields)
    assert_nothing_stored()


def test_honeypot_hit_answers_like_success_and_is_kept_as_spam(
    client: TestClient, form_id: str
) -> None:
    ok = client.post(f"/v1/forms/{form_id}/submit", json=valid_submission())
    caught = client.post(
        f"/v1/forms/{form_id}/submit",
        json=valid_submission(website_url="http://spam.example", email="bot@"),
    )

    assert caught.status_code == 200
    assert caught.json() == ok.json()
    accepted, spam = submissions()
    assert (accepted.status, spam.status) == ("accepted", "spam")
    assert spam.data["website_url"] == "http://spam.example"
    assert get_queue().depth() == 1
    drain()
    with db.session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Contact)) == 1


def test_html_form_post_redirects_or_thanks_and_errors_are_json(
    client: TestClient, marketer: dict[str, str], form_id: str
) -> None:
    fields = {
        "email": "ann@example.com",
        "first_name": "Ann",
        "consent_email": "on",
        "nurture_aid": VISITOR,
    }
    thanks = client.post(f"/v1/forms/{form_id}/submit", data=fields, headers={"Origin": SITE})
    assert thanks.status_code == 200
    assert thanks.headers["content-type"].startswith("text/html")
    assert "Thanks, we will call you." in thanks.text

    client.patch(
        f"/api/v1/forms/{form_id}",
        json={"redirect_url": "https://www.example.com/thanks"},
        headers=marketer,
    )
    redirected = client.post(
        f"/v1/forms/{form_id}/submit",
        data=fields,
        headers={"Referer": "https://www.example.com/contact"},
        follow_redirects=False,
    )
    assert redirected.status_code == 303
    assert redirected.headers["location"] == "https://www.example.com/thanks"

    invalid = client.post(f"/v1/forms/{form_id}/submit", data={**fields, "consent_email": ""})
    assert_error(invalid, 422, "consent_email")
    assert invalid.headers["content-type"].startswith("application/json")

    first, second = submissions()
    assert first.page_url is None
    assert second.page_url == "https://www.example.com/contact"
    assert [envelope["anonymousId"] for entry in queued() for envelope in entry] == [VISITOR] * 4


def test_other_origin_is_403_and_stores_nothing(client: TestClient, form_id: str) -> None:
    response = client.post(
        f"/v1/forms/{form_id}/submit",
        json=valid_submission(),
        headers={"Origin": "https://evil.example"},
    )

    assert_error(response, 403)
    assert "access-control-allow-origin" not in response.headers
    assert_nothing_stored()


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b"email=a", "multipart/form-data; boundary=x", 415),
        (b'{"email": "' + b"x" * 70_000 + b'"}', "application/json", 413),
    ],
)
def test_unreadable_bodies_are_refused(
    client: TestClient, form_id: str, content: bytes, content_type: str, status: int
) -> None:
    response = client.post(
        f"/v1/forms/{form_id}/submit", content=content, headers={"Content-Type": content_type}
    )

    assert_error(response, status)
    assert_nothing_stored()


def test_queue_down_is_503_and_the_submission_is_rolled_back(
    backend: Backend,
    form_id: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if backend.redis_url:
        monkeypatch.setenv("NURTURE_REDIS_URL", "redis://127.0.0.1:6390/0")
    else:
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("")
        monkeypatch.setenv("NURTURE_DATA_DIR", str(blocker / "data"))
    reset_caches()

    with TestClient(create_app()) as client:
        response = client.post(f"/v1/forms/{form_id}/submit", json=valid_submission())

    assert_error(response, 503)
    assert response.headers["retry-after"] == "1"
    assert submissions() == []


def test_ingest_turns_the_submission_into_a_contact_with_consent(
    client: TestClient, form_id: str, write_key: str
) -> None:
    page_view = {
        "type": "page",
        "anonymousId": VISITOR,
        "writeKey": write_key,
        "context": {"page": {"url": PAGE}},
    }
    assert client.post("/v1/page", json=page_view).status_code == 200
    assert client.post(f"/v1/forms/{form_id}/submit", json=valid_submission()).status_code == 200

    drain()

    with db.session_scope() as session:
        [contact] = session.scalars(select(Contact)).all()
        assert contact.email == "ann.lee@example.com"
        assert contact.phone == "+8613800138000"
        assert contact.traits["first_name"] == "Ann"
        assert (contact.email_consent, contact.sms_consent) == ("granted", "denied")
        records = session.scalars(select(ConsentRecord).order_by(ConsentRecord.channel)).all()
        assert [(r.channel, r.granted, r.text, r.page_url, str(r.form_id)) for r in records] == [
            ("email", True, EMAIL_CONSENT, PAGE, form_id),
            ("sms", False, SMS_CONSENT, PAGE, form_id),
        ]
        [submission] = session.scalars(select(FormSubmission)).all()
        assert submission.contact_id == contact.id
        names = session.scalars(
            select(Event.name).where(Event.contact_id == contact.id).order_by(Event.id)
        ).all()
        assert "form_submitted" in names
        assert session.scalar(select(func.count()).select_from(Event)) == len(names)
