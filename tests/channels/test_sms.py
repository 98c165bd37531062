"""SMS through Aliyun Dysms against a local fake that checks the RPC signature, parameters and
template params like Aliyun does: receipts, replies that unsubscribe, daytime-only marketing,
per-number limits and each class of error code."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from capture.models import Contact
from channels import tasks
from channels.models import ChannelAlert, ChannelState, Delivery, SendClaim, Suppression
from channels.providers.aliyun_sms import AliyunSms
from channels.sending import SENDING_LEASE
from channels.settings import get_channel_settings
from core import db
from core.clock import clock
from tests.channels.conftest import (
    PUBLIC_URL,
    auth,
    delivery,
    events_of,
    freeze,
    make_contact,
)
from tests.channels.fakes import FakeDysms
from tests.channels.test_email import CHROME

TOKEN = "?token=feedback-test-token"
PHONE = "13800138000"


def create_sms_template(client: TestClient, admin_key: str, **fields: Any) -> str:
    body = {
        "name": "Spring offer",
        "channel": "sms",
        "provider_template_code": "SMS_100001",
        "body": "${name}您好，春季新品上市，详询官网。拒收请回复R",
        "params": {"name": "{{ contact.first_name | default('客户') }}"},
        **fields,
    }
    response = client.post("/api/v1/templates", json=body, headers=auth(admin_key))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def send_sms(
    client: TestClient,
    admin_key: str,
    contact_id: uuid.UUID,
    template_id: str,
    key: str,
    **extra: Any,
) -> Delivery:
    body = {
        "contact_id": str(contact_id),
        "channel": "sms",
        "template_id": template_id,
        "idempotency_key": key,
        **extra,
    }
    response = client.post("/api/v1/deliveries", json=body, headers=auth(admin_key))
    assert response.status_code == 201, response.text
    return delivery(response.json()["id"])


@pytest.fixture
def daytime() -> None:
    freeze("2026-03-02T10:00:00+08:00")


def test_sms_is_signed_sent_receipted_and_an_r_reply_unsubscribes(
    channels_env: None, dysms: FakeDysms, client: TestClient, admin_key: str, daytime: None
) -> None:
    contact_id = make_contact()
    template_id = create_sms_template(client, admin_key)
    sent = send_sms(client, admin_key, contact_id, template_id, "offer:1")

    assert dysms.rejected == []
    [message] = dysms.sent
    assert (message.phone, message.sign_name, message.template_code) == (
        PHONE,
        "Nurture",
        "SMS_100001",
    )
    assert message.params == {"name": "Wei"}
    assert message.out_id == str(sent.id)
    assert sent.status == "sent" and sent.provider == "aliyun"
    assert sent.provider_message_id == message.biz_id

    receipt = {
        "phone_number": PHONE,
        "send_time": "2026-03-02 10:00:00",
        "report_time": "2026-03-02 10:00:05",
        "success": True,
        "err_code": "DELIVERED",
        "err_msg": "用户接收成功",
        "sms_size": "1",
        "biz_id": message.biz_id,
        "out_id": str(sent.id),
    }
    for _ in range(2):  # Aliyun retries pushes; the second changes nothing
        answer = client.post("/hooks/aliyun/sms-report" + TOKEN, json=[receipt])
        assert answer.status_code == 200
        assert answer.json() == {"code": 0, "msg": "接收成功"}
    assert delivery(sent.id).status == "delivered"
    assert len(events_of(contact_id, "sms_delivered")) == 1

    reply = {
        "phone_number": PHONE,
        "send_time": "2026-03-02 10:05:00",
        "content": " r ",
        "sign_name": "Nurture",
        "dest_code": "1234",
        "sequence_id": 889911,
    }
    answer = client.post("/hooks/aliyun/sms-up" + TOKEN, json=[reply])
    assert answer.json() == {"code": 0, "msg": "接收成功"}
    with db.session_scope() as session:
        contact = session.get(Contact, contact_id)
        assert contact is not None and contact.sms_unsubscribed and contact.sms_consent == "denied"
    [event] = events_of(contact_id, "sms_unsubscribed")
    assert event.properties["method"] == "sms_reply"

    clock.advance(timedelta(days=2))
    stopped = send_sms(client, admin_key, contact_id, template_id, "offer:2")
    assert (stopped.status, stopped.error_code) == ("suppressed", "unsubscribed")
    assert len(dysms.sent) == 1


@pytest.mark.parametrize("word", ["TD", "退订", "T"])
def test_other_unsubscribe_replies(channels_env: None, client: TestClient, word: str) -> None:
    contact_id = make_contact()
    reply = {"phone_number": PHONE, "content": word, "sequence_id": f"seq-{word}"}
    assert client.post("/hooks/aliyun/sms-up" + TOKEN, json=[reply]).status_code == 200
    with db.session_scope() as session:
        contact = session.get(Contact, contact_id)
        assert contact is not None and contact.sms_unsubscribed


def test_an_ordinary_reply_changes_nothing(channels_env: None, client: TestClient) -> None:
    contact_id = make_contact()
    reply = {"phone_number": PHONE, "content": "请问价格多少", "sequence_id": 5}
    assert client.post("/hooks/aliyun/sms-up" + TOKEN, json=[reply]).status_code == 200
    with db.session_scope() as session:
        contact = session.get(Contact, contact_id)
        assert contact is not None and not contact.sms_unsubscribed


def test_marketing_sms_at_21_is_deferred_to_08(
    channels_env: None, dysms: FakeDysms, client: TestClient, admin_key: str
) -> None:
    freeze("2026-03-02T21:00:00+08:00")
    contact_id = make_contact()
    berlin = make_contact(phone="+8613900139000", timezone="Europe/Berlin")
    template_id = create_sms_template(client, admin_key)

    late = send_sms(client, admin_key, contact_id, template_id, "late")
    assert (late.status, late.error_code) == ("deferred", "sms_marketing_hours")
    assert late.next_attempt_at == freeze("2026-03-03T08:00:00+08:00")
    clock.freeze(freeze("2026-03-02T21:00:00+08:00"))
    assert dysms.sent == []

    # 21:00 in Shanghai is 14:00 in Berlin: the contact's own time zone decides.
    assert send_sms(client, admin_key, berlin, template_id, "berlin").status == "sent"

    clock.freeze(late.next_attempt_at - timedelta(minutes=1))
    assert tasks.resume_due() == 0
    clock.freeze(late.next_attempt_at)
    assert tasks.resume_due() == 1
    assert delivery(late.id).status == "sent"
    assert [m.phone for m in dysms.sent] == ["13900139000", PHONE]


@pytest.mark.parametrize(
    ("code", "status", "wait"),
    [
        ("isp.SYSTEM_ERROR", "deferred", timedelta(seconds=54)),
        ("Throttling.User", "deferred", timedelta(seconds=54)),
        ("isv.BUSINESS_LIMIT_CONTROL", "deferred", timedelta(hours=1)),
        ("isv.DAY_LIMIT_CONTROL", "deferred", timedelta(hours=14)),
        ("isv.SMS_CONTENT_ILLEGAL", "failed", None),
    ],
)
def test_error_codes_by_class(
    channels_env: None,
    dysms: FakeDysms,
    client: TestClient,
    admin_key: str,
    daytime: None,
    code: str,
    status: str,
    wait: timedelta | None,
) -> None:
    dysms.script[PHONE] = code
    sent = send_sms(client, admin_key, make_contact(), create_sms_template(client, admin_key), "k")
    assert (sent.status, sent.error_code) == (status, code)
    assert code in (sent.error_reason or "")
    if wait is None:
        assert sent.next_attempt_at is None and sent.failed_at is not None
    else:
        assert sent.next_attempt_at is not None
        assert sent.next_attempt_at - clock.now() >= wait


def test_transient_errors_give_up_after_the_last_attempt(
    channels_env: None, dysms: FakeDysms, client: TestClient, admin_key: str, daytime: None
) -> None:
    dysms.script[PHONE] = "isp.SYSTEM_ERROR"
    sent = send_sms(client, admin_key, make_contact(), create_sms_template(client, admin_key), "k")
    for _ in range(get_channel_settings().send_max_attempts - 1):
        record = delivery(sent.id)
        assert record.status == "deferred" and record.next_attempt_at is not None
        clock.freeze(record.next_attempt_at)
        tasks.resume_due()
    record = delivery(sent.id)
    assert (record.status, record.attempts) == ("failed", 5)


def test_illegal_number_is_marked_invalid(
    channels_env: None, dysms: FakeDysms, client: TestClient, admin_key: str, daytime: None
) -> None:
    contact_id = make_contact(phone="+8619999999999")
    dysms.script["19999999999"] = "isv.MOBILE_NUMBER_ILLEGAL"
    template_id = create_sms_template(
        client, admin_key, purpose="transactional", body="验证码${name}"
    )
    first = send_sms(client, admin_key, contact_id, template_id, "k1", transactional=True)
    assert (first.status, first.error_code) == ("failed", "isv.MOBILE_NUMBER_ILLEGAL")
    with db.session_scope() as session:
        reason = session.scalar(
            select(Suppression.reason).where(Suppression.address == "+8619999999999")
        )
    assert reason == "invalid_number"
    again = send_sms(client, admin_key, contact_id, template_id, "k2", transactional=True)
    assert (again.status, again.error_code) == ("suppressed", "suppressed_invalid_number")


def test_template_and_param_errors_from_aliyun_fail_with_the_reason(
    channels_env: None, dysms: FakeDysms, client: TestClient, admin_key: str, daytime: None
) -> None:
    unknown = create_sms_template(client, admin_key, provider_template_code="SMS_999999")
    first = send_sms(client, admin_key, make_contact(), unknown, "k1")
    assert (first.status, first.error_code) == ("failed", "isv.SMS_TEMPLATE_ILLEGAL")
    missing = create_sms_template(
        client, admin_key, params={"nickname": "{{ contact.first_name }}"}
    )
    second = send_sms(client, admin_key, make_contact(phone="+8613700137000"), missing, "k2")
    assert (second.status, second.error_code) == ("failed", "isv.TEMPLATE_MISSING_PARAMETERS")


def test_account_problem_pauses_sms_and_raises_an_alert_until_resumed(
    channels_env: None, dysms: FakeDysms, client: TestClient, admin_key: str, daytime: None
) -> None:
    dysms.script[PHONE] = "isv.AMOUNT_NOT_ENOUGH"
    template_id = create_sms_template(client, admin_key)
    first = send_sms(client, admin_key, make_contact(), template_id, "k1")
    assert (first.status, first.error_code) == ("deferred", "isv.AMOUNT_NOT_ENOUGH")
    calls = len(dysms.server.requests)
    second = send_sms(client, admin_key, make_contact(phone="+8613700137000"), template_id, "k2")
    assert (second.status, second.error_code) == ("deferred", "channel_paused")
    assert len(dysms.server.requests) == calls  # paused: Aliyun is not called at all

    health = client.get("/api/v1/channels/health", headers=auth(admin_key)).json()
    sms = next(c for c in health["channels"] if c["channel"] == "sms")
    assert sms["paused"] and sms["pause_code"] == "isv.AMOUNT_NOT_ENOUGH"
    assert any(a["code"] == "isv.AMOUNT_NOT_ENOUGH" for a in health["alerts"])

    dysms.script.clear()  # the balance was topped up
    answer = client.post("/api/v1/channels/sms/resume", headers=auth(admin_key))
    assert answer.status_code == 204
    assert tasks.resume_due() == 2
    assert delivery(first.id).status == "sent" and delivery(second.id).status == "sent"


def test_a_wrong_secret_fails_the_signature_check(
    channels_env: None,
    dysms: FakeDysms,
    client: TestClient,
    admin_key: str,
    daytime: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NURTURE_ALIYUN_ACCESS_KEY_SECRET", "not-the-secret")
    get_channel_settings.cache_clear()
    sent = send_sms(client, admin_key, make_contact(), create_sms_template(client, admin_key), "k")
    assert dysms.rejected[-1][0] == "SignatureDoesNotMatch"
    assert dysms.sent == []
    assert sent.status == "deferred"
    with db.session_scope() as session:
        state = session.get(ChannelState, "sms")
        assert state is not None and state.paused_at is not None
        assert session.scalars(select(ChannelAlert)).all()


def test_ambiguous_timeout_is_checked_with_query_send_details_before_resending(
    channels_env: None, dysms: FakeDysms, client: TestClient, admin_key: str, daytime: None
) -> None:
    dysms.script[PHONE] = "drop"  # Aliyun takes the message, the answer never arrives
    sent = send_sms(client, admin_key, make_contact(), create_sms_template(client, admin_key), "k")
    assert (sent.status, sent.error_code) == ("deferred", "ambiguous_timeout")
    assert len(dysms.sent) == 1
    dysms.script.clear()
    assert sent.next_attempt_at is not None
    clock.freeze(sent.next_attempt_at)
    tasks.resume_due()
    assert delivery(sent.id).status == "sent"
    assert len(dysms.sent) == 1  # found by QuerySendDetails, not sent again


def test_after_a_timeout_that_lost_the_message_it_is_sent_again(
    channels_env: None, dysms: FakeDysms, client: TestClient, admin_key: str, daytime: None
) -> None:
    dysms.script[PHONE] = "lost"  # the connection drops before Aliyun takes the message
    sent = send_sms(client, admin_key, make_contact(), create_sms_template(client, admin_key), "k")
    assert (sent.status, sent.error_code) == ("deferred", "ambiguous_timeout")
    assert dysms.sent == []
    dysms.script.clear()
    assert sent.next_attempt_at is not None
    clock.freeze(sent.next_attempt_at)
    tasks.resume_due()
    assert delivery(sent.id).status == "sent"
    assert [m.out_id for m in dysms.sent] == [str(sent.id)]
    actions = [r.query.get("Action") for r in dysms.server.requests[-2:]]
    assert actions == ["QuerySendDetails", "SendSms"]


def test_per_number_limits_hold_even_transactional_messages(
    channels_env: None, dysms: FakeDysms, client: TestClient, admin_key: str, daytime: None
) -> None:
    contact_id = make_contact()
    template_id = create_sms_template(
        client,
        admin_key,
        purpose="transactional",
        provider_template_code="SMS_100002",
        body="您的验证码是${code}",
        params={"code": "{{ code }}"},
    )
    first = send_sms(
        client,
        admin_key,
        contact_id,
        template_id,
        "otp1",
        transactional=True,
        context={"code": "123456"},
    )
    second = send_sms(
        client,
        admin_key,
        contact_id,
        template_id,
        "otp2",
        transactional=True,
        context={"code": "654321"},
    )
    assert first.status == "sent"
    assert (second.status, second.error_code) == ("deferred", "per_number_limit_minute")
    assert second.next_attempt_at == clock.now() + timedelta(minutes=1)
    assert dysms.sent[0].params == {"code": "123456"}

    for minute in range(1, 5):
        clock.advance(timedelta(minutes=1))
        tasks.resume_due()
        send_sms(
            client,
            admin_key,
            contact_id,
            template_id,
            f"more{minute}",
            transactional=True,
            context={"code": "1"},
        )
    sent_count = len(dysms.sent)
    assert sent_count == 5  # 1 a minute, 5 an hour
    clock.advance(timedelta(minutes=1))
    blocked = send_sms(
        client,
        admin_key,
        contact_id,
        template_id,
        "hourly",
        transactional=True,
        context={"code": "1"},
    )
    assert blocked.error_code == "per_number_limit_hour"


def test_marketing_sms_frequency_cap(
    channels_env: None, dysms: FakeDysms, client: TestClient, admin_key: str, daytime: None
) -> None:
    contact_id = make_contact()
    template_id = create_sms_template(client, admin_key)
    assert send_sms(client, admin_key, contact_id, template_id, "m1").status == "sent"
    clock.advance(timedelta(hours=2))
    capped = send_sms(client, admin_key, contact_id, template_id, "m2")
    assert capped.error_code == "frequency_cap_daily"  # default: 1 marketing SMS a day


def test_marketing_sms_template_needs_opt_out_wording(
    channels_env: None, client: TestClient, admin_key: str
) -> None:
    body = {
        "name": "No opt-out",
        "channel": "sms",
        "provider_template_code": "SMS_100001",
        "body": "${name}您好，春季新品上市",
        "params": {"name": "{{ contact.first_name }}"},
    }
    answer = client.post("/api/v1/templates", json=body, headers=auth(admin_key))
    assert answer.status_code == 422
    assert "body" in answer.json()["error"]["fields"]


def test_sms_test_send_and_receipt_token(
    channels_env: None, dysms: FakeDysms, client: TestClient, admin_key: str
) -> None:
    template_id = create_sms_template(client, admin_key)
    answer = client.post(
        f"/api/v1/templates/{template_id}/test-send",
        json={"to": "138 0013 8000", "sample": {"contact": {"traits": {"first_name": "测试"}}}},
        headers=auth(admin_key),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["sent"] is True
    assert dysms.sent[0].params == {"name": "测试"}
    assert client.post("/hooks/aliyun/sms-report?token=wrong", json=[]).status_code == 401


def test_send_batch_sms(channels_env: None, dysms: FakeDysms) -> None:
    client = AliyunSms(get_channel_settings())
    phones = ["+8613800138000", "+8613900139000", "+8613700137000"]
    outcome = client.send_batch(
        phones, "Nurture", "SMS_100001", [{"name": n} for n in ("A", "B", "C")], "batch-1"
    )
    assert outcome.result == "sent" and outcome.message_id
    assert [m.phone for m in dysms.sent] == ["13800138000", "13900139000", "13700137000"]
    with pytest.raises(ValueError):
        client.send_batch(["+8613800138000"] * 101, "Nurture", "SMS_100001", [{}] * 101, "x")


def test_links_in_an_sms_are_short_tracked_and_a_click_becomes_an_event(
    channels_env: None, dysms: FakeDysms, client: TestClient, admin_key: str, daytime: None
) -> None:
    contact_id = make_contact()
    template_id = create_sms_template(
        client,
        admin_key,
        body="${name}您好，春季新品上市：${link} 拒收请回复R",
        params={
            "name": "{{ contact.first_name | default('客户') }}",
            "link": "https://acme.example/spring?ref={{ contact.first_name }}",
        },
    )
    sent = send_sms(client, admin_key, contact_id, template_id, "offer:1", campaign="spring")
    [message] = dysms.sent
    assert message.params["name"] == "Wei"
    short = message.params["link"]
    assert short.startswith(f"{PUBLIC_URL}/s/") and len(short) < 80
    assert "acme.example" not in short

    clock.advance(timedelta(minutes=2))
    path = short.removeprefix(PUBLIC_URL)
    forged = client.get(path[:-3] + ("aaa" if not path.endswith("aaa") else "bbb"))
    assert forged.status_code == 404
    clicked = client.get(path, headers={"User-Agent": CHROME}, follow_redirects=False)
    assert clicked.status_code == 302
    target = urlsplit(clicked.headers["location"])
    assert (target.netloc, target.path) == ("acme.example", "/spring")
    assert parse_qs(target.query) == {
        "ref": ["Wei"],
        "utm_source": ["nurture"],
        "utm_medium": ["sms"],
        "utm_campaign": ["spring"],
    }
    assert delivery(sent.id).status == "clicked"
    [event] = events_of(contact_id, "sms_clicked")
    assert event.properties["delivery_id"] == str(sent.id)
    assert event.properties["url"] == clicked.headers["location"]
    assert event.properties["machine"] is False and event.properties["campaign"] == "spring"
    # A second click is the same touch, not a new event.
    client.get(path, headers={"User-Agent": CHROME}, follow_redirects=False)
    assert len(events_of(contact_id, "sms_clicked")) == 1


def test_a_claim_left_by_a_stopped_worker_is_checked_not_resent(
    channels_env: None, dysms: FakeDysms, client: TestClient, admin_key: str, daytime: None
) -> None:
    template_id = create_sms_template(client, admin_key)
    already = len(dysms.server.requests)
    sent = send_sms(client, admin_key, make_contact(), template_id, "k1")
    assert len(dysms.sent) == 1 and sent.sending_at is not None
    other = make_contact(phone="+8613900139000")
    with db.session_scope() as session:
        # As a worker killed after SendSms, before recording the answer, leaves it.
        session.execute(
            update(Delivery)
            .where(Delivery.id == sent.id)
            .values(status="sending", sent_at=None, attempts=0, updated_at=clock.now())
        )
        # And one that was only reserved by that worker's batch, never claimed.
        reserved = Delivery(
            idempotency_key="k2",
            contact_id=other,
            channel="sms",
            template_id=uuid.UUID(template_id),
            status="sending",
        )
        session.add(reserved)
        session.flush()
        # The run's ledger: the first claimed, no answer noted; the other never claimed.
        session.add_all(
            [
                SendClaim(delivery_id=sent.id, claimed_at=clock.now()),
                SendClaim(delivery_id=reserved.id),
            ]
        )
    # Within the lease nothing is touched: the worker may still be sending.
    assert tasks.send_delivery(str(sent.id)) == "sending"
    assert tasks.resume_due() == 0
    clock.advance(SENDING_LEASE + timedelta(seconds=1))
    assert tasks.resume_due() == 2
    assert delivery(sent.id).status == "sent"  # found by QuerySendDetails
    assert delivery(reserved.id).status == "sent"
    assert sorted(m.phone for m in dysms.sent) == [PHONE, "13900139000"]
    actions = [r.query.get("Action") for r in dysms.server.requests[already:]]
    assert sorted(actions) == ["QuerySendDetails", "SendSms", "SendSms"]
