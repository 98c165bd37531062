"""Headless Chromium against the live service: a test site on another origin embeds the
snippet and a form; a visitor arrives from a Baidu ad, browses, submits, and ends as one
contact with the right channel, consent and timeline. Also the snippet's own promises."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from playwright.sync_api import Browser, Page, Request, expect, sync_playwright
from sqlalchemy import select

from api.app import create_server_app
from capture.envelope import payload_envelopes
from capture.models import ConsentRecord, Contact, Event, FormSubmission, Visit
from capture.queue import get_queue
from capture.sources import create_source
from core import db
from core.keys import Role
from tests.conftest import Backend, drain, make_key

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EMAIL_CONSENT = "I agree that Acme may email me product news. 我同意接收邮件。"
SMS_CONSENT = "I agree that Acme may text me offers; reply TD to stop."
UTM_QUERY = "?utm_source=baidu&utm_medium=cpc&utm_campaign=spring_launch&bd_vid=123"
WAIT_SECONDS = 15


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        message = f"Chromium is not installed at {CHROMIUM}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: a missing browser is a failure)")
        pytest.skip(message)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def visitor_page(browser: Browser) -> Page:
    """A page that looks like a person's Chrome: ingest rightly keeps HeadlessChrome, a bot,
    out of profiles."""
    major = browser.version.split(".")[0]
    user_agent = (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        f"Chrome/{major}.0.0.0 Safari/537.36"
    )
    return browser.new_context(user_agent=user_agent).new_page()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Waits for another process (server, browser) to get somewhere, within a deadline."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def api_url(pg_backend: Backend) -> Iterator[str]:
    """The real service on a free port: uvicorn in a thread of this process, so it shares the
    test's database and Redis stream."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_server_app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, "the API server to start")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(WAIT_SECONDS)


class StaticSite:
    """A website on its own origin: pages are HTML strings by path, query strings ignored."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        pages = self.pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = pages.get(urlsplit(self.path).path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.end_headers()
                self.wfile.write((body or "not found").encode())

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site() -> Iterator[StaticSite]:
    test_site = StaticSite()
    yield test_site
    test_site.close()


def new_source(origin: str) -> tuple[str, str]:
    """A source that allows the test site's origin: its id and write key."""
    with db.session_scope() as session:
        source, write_key = create_source(session, "test site", [origin])
        return str(source.id), write_key


def snippet_tag(api_url: str, write_key: str, extra: str = "") -> str:
    source = f"{api_url}/v1/snippet.js"
    return f'<script src="{source}" data-write-key="{write_key}" {extra} async></script>'


def is_batch(request_or_response: Any) -> bool:
    return urlsplit(request_or_response.url).path == "/v1/batch"


def sent_messages(requests: list[Request]) -> list[dict[str, Any]]:
    return [m for r in requests if is_batch(r) for m in json.loads(r.post_data or "{}")["batch"]]


def test_visitor_from_a_baidu_ad_becomes_one_contact_with_channel_consent_and_timeline(
    browser: Browser, api_url: str, site: StaticSite
) -> None:
    marketer = {"Authorization": f"Bearer {make_key(Role.marketer)}"}
    source_id, write_key = new_source(site.origin)
    with httpx.Client(base_url=api_url, headers=marketer) as admin:
        created = admin.post(
            "/api/v1/forms",
            json={
                "source_id": source_id,
                "name": "Book a demo",
                "fields": [
                    {
                        "name": "email",
                        "label": "Work email",
                        "type": "email",
                        "required": True,
                        "maps_to": "email",
                    },
                    {"name": "phone", "label": "Mobile", "type": "phone", "maps_to": "phone"},
                    {"name": "first_name", "label": "First name", "maps_to": "first_name"},
                    {"name": "last_name", "label": "Last name", "maps_to": "last_name"},
                ],
                "consents": [
                    {"channel": "email", "text": EMAIL_CONSENT, "required": True},
                    {"channel": "sms", "text": SMS_CONSENT},
                ],
                "success_message": "Thanks! We will be in touch.",
            },
        )
        assert created.status_code == 201, created.text
        form_id = created.json()["id"]
    site.pages["/"] = (
        f"<!doctype html><title>Spring launch</title>{snippet_tag(api_url, write_key)}"
        '<h1>Spring launch</h1><a id="contact" href="/contact">Talk to sales</a>'
    )
    site.pages["/contact"] = (
        f"<!doctype html><title>Contact sales</title>{snippet_tag(api_url, write_key)}"
        f'<div data-nurture-form="{form_id}"></div>'
        f'<script src="{api_url}/v1/forms/{form_id}/embed.js" async></script>'
    )
    page = visitor_page(browser)

    with page.expect_response(is_batch) as landing_sent:
        page.goto(site.origin + "/" + UTM_QUERY)
    with page.expect_response(is_batch) as contact_sent:
        page.click("#contact")
    assert landing_sent.value.status == contact_sent.value.status == 200
    page.fill("input[name=email]", "ann.lee@")
    with page.expect_response(lambda r: r.url.endswith("/submit")) as refused:
        page.click("form.nurture-form button[type=submit]")
    assert refused.value.status == 422
    # The response arrives before the form's script has written the message: wait for it.
    expect(page.locator("[data-error-for=email]")).to_have_text("is not a valid email address")
    page.fill("input[name=email]", "  Ann.Lee@Example.COM ")
    page.fill("input[name=phone]", "138 0013 8000")
    page.fill("input[name=first_name]", "Ann")
    page.fill("input[name=last_name]", "Lee")
    assert page.is_visible(f"text={EMAIL_CONSENT}") and page.is_visible(f"text={SMS_CONSENT}")
    page.check("input[name=consent_email]")
    page.check("input[name=consent_sms]")
    with page.expect_response(lambda r: r.url.endswith("/submit")) as submitted:
        page.click("form.nurture-form button[type=submit]")
    assert submitted.value.status == 200, submitted.value.text()
    page.wait_for_selector("text=Thanks! We will be in touch.")
    visitor = page.evaluate("nurture.anonymousId()")
    [cookie] = [c for c in page.context.cookies() if c["name"] == "nurture_aid"]
    assert cookie["value"] == visitor
    page.close()

    drain()

    contact_page = site.origin + "/contact"
    with db.session_scope() as session:
        [contact] = session.scalars(select(Contact)).all()
        assert contact.email == "ann.lee@example.com"
        assert contact.phone == "+8613800138000"
        assert (contact.traits["first_name"], contact.traits["last_name"]) == ("Ann", "Lee")
        assert contact.first_touch_channel == "paid_search"
        assert contact.first_touch_source == "baidu"
        assert contact.first_touch_campaign == "spring_launch"
        assert (contact.email_consent, contact.sms_consent) == ("granted", "granted")
        records = session.scalars(select(ConsentRecord).order_by(ConsentRecord.channel)).all()
        assert [(r.channel, r.granted, r.text, r.page_url) for r in records] == [
            ("email", True, EMAIL_CONSENT, contact_page),
            ("sms", True, SMS_CONSENT, contact_page),
        ]
        assert all(r.contact_id == contact.id and str(r.form_id) == form_id for r in records)
        [submission] = session.scalars(select(FormSubmission)).all()
        assert (submission.status, submission.contact_id) == ("accepted", contact.id)
        events = session.scalars(select(Event).order_by(Event.timestamp, Event.id)).all()
        assert {e.contact_id for e in events} == {contact.id}
        assert {e.anonymous_id for e in events} == {visitor}
        [visit] = session.scalars(select(Visit)).all()
        assert (visit.channel, visit.utm_source, visit.click_id) == ("paid_search", "baidu", "123")

    with httpx.Client(base_url=api_url, headers=marketer) as admin:
        timeline = admin.get(f"/api/v1/contacts/{contact.id}/timeline").json()["items"]
    oldest_first = [(e["type"], e["name"], e["url"]) for e in reversed(timeline)]
    behaviour = [entry for entry in oldest_first if entry[0] != "identify"]
    assert behaviour == [
        ("page", None, site.origin + "/" + UTM_QUERY),
        ("page", None, contact_page),
        ("track", "form_submitted", contact_page),
    ]


def test_snippet_queue_cookie_and_message_shape(
    browser: Browser, api_url: str, site: StaticSite
) -> None:
    _source_id, write_key = new_source(site.origin)
    # The async loader: calls made before the snippet arrives wait in nurture.q.
    site.pages["/"] = (
        "<!doctype html><title>Async</title><script>"
        "window.nurture=window.nurture||function(){(nurture.q=nurture.q||[]).push(arguments)};"
        f"nurture('init','{write_key}',{{host:'{api_url}'}});"
        "nurture('track','Queued Early',{plan:'pro'});"
        f'</script><script async src="{api_url}/v1/snippet.js"></script>'
    )
    page = browser.new_page()
    requests: list[Request] = []
    page.on("request", lambda request: requests.append(request))

    with page.expect_response(is_batch):
        page.goto(site.origin + "/?utm_source=wechat&utm_medium=social")
    with page.expect_response(is_batch):
        page.evaluate(
            "nurture.identify('user-42', {email: 'ann@example.com'});"
            "nurture.track('Clicked CTA', {cta: 'hero'})"
        )
    visitor = page.evaluate("nurture.anonymousId()")
    [cookie] = [c for c in page.context.cookies() if c["name"] == "nurture_aid"]
    page.close()

    assert cookie["value"] == visitor
    assert (cookie["sameSite"], cookie["path"]) == ("Lax", "/")
    expires = datetime.fromtimestamp(cookie["expires"], UTC) - datetime.now(UTC)
    assert timedelta(days=364) < expires <= timedelta(days=366)
    messages = sent_messages(requests)
    assert [(m["type"], m.get("event")) for m in messages] == [
        ("page", None),
        ("track", "Queued Early"),
        ("identify", None),
        ("track", "Clicked CTA"),
    ]
    for message in messages:
        assert message["anonymousId"] == visitor
        assert message["writeKey"] == write_key
        assert message["timestamp"] and message["sentAt"]
        assert message["context"]["page"]["path"] == "/"
        assert message["context"]["campaign"] == {"source": "wechat", "medium": "social"}
    assert len({m["messageId"] for m in messages}) == 4
    assert messages[0]["properties"]["title"] == "Async"
    assert messages[1]["properties"] == {"plan": "pro"}
    assert messages[2]["userId"] == messages[3]["userId"] == "user-42"
    assert messages[2]["traits"] == {"email": "ann@example.com"}
    queued = [m for _id, p in get_queue().take("test", 100, 0) for m in payload_envelopes(p)]
    assert sorted(m["messageId"] for m in queued) == sorted(m["messageId"] for m in messages)


def test_do_not_track_is_honoured_only_when_the_site_opts_in(
    browser: Browser, api_url: str, site: StaticSite
) -> None:
    _source_id, write_key = new_source(site.origin)
    site.pages["/opted-in"] = snippet_tag(api_url, write_key, 'data-honor-dnt="true"')
    site.pages["/default"] = snippet_tag(api_url, write_key)
    context = browser.new_context()
    context.add_init_script(
        "Object.defineProperty(Navigator.prototype, 'doNotTrack', {get: () => '1'})"
    )
    page = context.new_page()
    requests: list[Request] = []
    page.on("request", lambda request: requests.append(request))

    page.goto(site.origin + "/opted-in")
    page.wait_for_function("window.nurture && window.nurture.loaded")
    page.evaluate("nurture.track('Ignored'); nurture.flush()")
    assert not [c for c in context.cookies() if c["name"] == "nurture_aid"]

    with page.expect_response(is_batch):
        page.goto(site.origin + "/default")
    context.close()
    assert [m["type"] for m in sent_messages(requests)] == ["page"]


def test_events_pending_when_the_page_hides_go_by_beacon(
    browser: Browser, api_url: str, site: StaticSite
) -> None:
    _source_id, write_key = new_source(site.origin)
    site.pages["/"] = snippet_tag(api_url, write_key)
    page: Page = browser.new_page()
    page.add_init_script(
        "const send = navigator.sendBeacon.bind(navigator); window.beacons = [];"
        "navigator.sendBeacon = (url, body) => {"
        "  window.beacons.push(body); return send(url, body);"
        "};"
    )
    with page.expect_response(is_batch):
        page.goto(site.origin + "/")
    queue = get_queue()
    wait_until(lambda: queue.depth() == 1, "the page view to be queued")

    page.evaluate(
        "nurture.track('Left Page', {scrolled: 80});"
        "Object.defineProperty(document, 'visibilityState', {get: () => 'hidden'});"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )

    [beacon] = page.evaluate("window.beacons")
    assert [m["event"] for m in json.loads(beacon)["batch"]] == ["Left Page"]
    wait_until(lambda: queue.depth() == 2, "the beacon to be queued")
    page.close()
    queued = [m for _id, p in queue.take("test", 100, 0) for m in payload_envelopes(p)]
    assert [(m["type"], m["event"]) for m in queued] == [("page", None), ("track", "Left Page")]
