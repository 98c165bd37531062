"""Local stand-ins for the services channels talk to, each checking what the real one checks:
an SMTP server (aiosmtpd), Aliyun Dysms (RPC signature, parameters, error codes), WeCom and
DingTalk robots (payload, DingTalk signature, rate limit) and a webhook receiver."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit
from zoneinfo import ZoneInfo

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from core.clock import clock

_SHANGHAI = ZoneInfo("Asia/Shanghai")

# SMTP


@dataclass
class ReceivedMail:
    sender: str
    recipients: list[str]
    data: bytes

    @property
    def message(self) -> Message:
        return message_from_bytes(self.data)

    def part(self, subtype: str) -> str:
        for part in self.message.walk():
            if part.get_content_type() == f"text/{subtype}":
                payload = part.get_payload(decode=True)
                assert isinstance(payload, bytes)
                return payload.decode(part.get_content_charset() or "utf-8")
        raise AssertionError(f"no text/{subtype} part")


class MailHandler:
    """Accepts mail, except for addresses told to answer with a given SMTP reply: recipients
    at RCPT (`rejections`) or after DATA (`data_rejections`), senders at MAIL
    (`sender_rejections`)."""

    def __init__(self) -> None:
        self.messages: list[ReceivedMail] = []
        self.rejections: dict[str, str] = {}
        self.sender_rejections: dict[str, str] = {}
        self.data_rejections: dict[str, str] = {}
        self.connections = 0

    def reset(self) -> None:
        """Forgets the mail received and the replies set up, for the next test."""
        self.messages.clear()
        self.rejections.clear()
        self.sender_rejections.clear()
        self.data_rejections.clear()

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        self.connections += 1
        session.host_name = hostname
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.sender_rejections:
            return self.sender_rejections[address]
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.rejections:
            return self.rejections[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        for recipient in envelope.rcpt_tos:
            if recipient in self.data_rejections:
                return self.data_rejections[recipient]
        content = envelope.original_content or b""
        self.messages.append(
            ReceivedMail(str(envelope.mail_from), list(envelope.rcpt_tos), bytes(content))
        )
        return "250 Message accepted for delivery"


def start_smtp(port: int = 0) -> tuple[Controller, MailHandler]:
    handler = MailHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=port or free_port())
    controller.start()
    return controller, handler


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# A small threaded HTTP server whose behaviour is a function of the request.


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


Reply = tuple[int, dict[str, Any] | None]  # (status, JSON body); None body drops the connection


class FakeServer:
    def __init__(self, respond: Callable[[Request], Reply]) -> None:
        self.respond = respond
        self.requests: list[Request] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                parts = urlsplit(self.path)
                request = Request(
                    "POST",
                    parts.path,
                    dict(parse_qsl(parts.query, keep_blank_values=True)),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                owner.requests.append(request)
                status, answer = owner.respond(request)
                if answer is None:
                    self.close_connection = True
                    return
                payload = json.dumps(answer, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json;charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# Aliyun Dysms


def percent_encode(value: str) -> str:
    """Aliyun's RFC 3986 encoding, written from the documentation (not the SDK's code)."""
    return quote(value, safe="~")


def rpc_signature(method: str, params: dict[str, str], secret: str) -> str:
    canonical = "&".join(
        f"{percent_encode(k)}={percent_encode(v)}" for k, v in sorted(params.items())
    )
    to_sign = f"{method}&{percent_encode('/')}&{percent_encode(canonical)}"
    digest = hmac.new(f"{secret}&".encode(), to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


@dataclass
class SentSms:
    phone: str
    sign_name: str
    template_code: str
    params: dict[str, str]
    out_id: str | None
    biz_id: str
    send_date: str
    status: int = 1  # 1 waiting for the receipt, 2 failed, 3 delivered


COMMON_PARAMS = (
    "AccessKeyId",
    "Action",
    "Format",
    "SignatureMethod",
    "SignatureNonce",
    "SignatureVersion",
    "Timestamp",
    "Version",
    "Signature",
)


@dataclass
class FakeDysms:
    access_key_id: str = "LTAItestkey"
    access_key_secret: str = "test-secret-for-signing"
    sign_names: set[str] = field(default_factory=lambda: {"Nurture"})
    # template code -> the variables its approved wording uses
    templates: dict[str, set[str]] = field(
        default_factory=lambda: {"SMS_100001": {"name"}, "SMS_100002": {"code"}}
    )
    # phone (as sent to Aliyun) -> an error code to answer; "drop" takes the message and hangs
    # up without answering, "lost" hangs up without taking it
    script: dict[str, str] = field(default_factory=dict)
    sent: list[SentSms] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    nonces: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.server = FakeServer(self.handle)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def stop(self) -> None:
        self.server.stop()

    def _error(self, status: int, code: str, message: str) -> Reply:
        self.rejected.append((code, message))
        return status, {"RequestId": str(uuid.uuid4()), "Code": code, "Message": message}

    def handle(self, request: Request) -> Reply:
        params = dict(request.query)
        if request.body:
            params.update(parse_qsl(request.body.decode(), keep_blank_values=True))
        missing = [name for name in COMMON_PARAMS if not params.get(name)]
        if missing:
            return self._error(400, f"Missing{missing[0]}", f"{missing[0]} is mandatory")
        if params["AccessKeyId"] != self.access_key_id:
            return self._error(
                404, "InvalidAccessKeyId.NotFound", "Specified access key is not found."
            )
        if params["SignatureMethod"] != "HMAC-SHA1" or params["SignatureVersion"] != "1.0":
            return self._error(400, "InvalidSignatureMethod", "unsupported signature method")
        if params["Version"] != "2017-05-25":
            return self._error(400, "InvalidVersion", "Specified parameter Version is not valid.")
        signature = params.pop("Signature")
        expected = rpc_signature(request.method, params, self.access_key_secret)
        if not hmac.compare_digest(signature, expected):
            # The SDK reads the string to sign after the colon, as Aliyun sends it.
            return self._error(400, "SignatureDoesNotMatch", "server string to sign is:mismatch")
        sent_at = datetime.strptime(params["Timestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        if abs(datetime.now(UTC) - sent_at) > timedelta(minutes=15):
            return self._error(400, "InvalidTimeStamp.Expired", "Specified time stamp is expired.")
        if params["SignatureNonce"] in self.nonces:
            return self._error(
                400, "SignatureNonceUsed", "Specified signature nonce was used already."
            )
        self.nonces.add(params["SignatureNonce"])
        action = params["Action"]
        if action == "SendSms":
            return self.send_sms(params)
        if action == "SendBatchSms":
            return self.send_batch(params)
        if action == "QuerySendDetails":
            return self.query(params)
        return self._error(400, "InvalidAction.NotFound", f"{action} is not found")

    def _check_message(
        self, phone: str, sign: str, code: str, raw_params: str | None
    ) -> Reply | None:
        if sign not in self.sign_names:
            return 200, self._body("isv.SMS_SIGNATURE_ILLEGAL", "该账号下找不到对应签名")
        if code not in self.templates:
            return 200, self._body("isv.SMS_TEMPLATE_ILLEGAL", "该账号下找不到对应模板")
        if not (len(phone) == 11 and phone.isdigit() and phone.startswith("1")):
            return 200, self._body("isv.MOBILE_NUMBER_ILLEGAL", "手机号码格式错误")
        try:
            values = json.loads(raw_params) if raw_params else {}
        except ValueError:
            return 200, self._body("isv.INVALID_JSON_PARAM", "JSON参数不合法，只接受字符串值")
        if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
            return 200, self._body("isv.INVALID_JSON_PARAM", "JSON参数不合法，只接受字符串值")
        if not self.templates[code] <= set(values):
            return 200, self._body("isv.TEMPLATE_MISSING_PARAMETERS", "模板缺少变量")
        return None

    def _body(self, code: str, message: str) -> dict[str, Any]:
        self.rejected.append((code, message))
        return {"RequestId": str(uuid.uuid4()), "Code": code, "Message": message}

    def send_sms(self, params: dict[str, str]) -> Reply:
        for name in ("PhoneNumbers", "SignName", "TemplateCode"):
            if not params.get(name):
                return self._error(400, f"Missing{name}", f"{name} is mandatory for this action.")
        phone = params["PhoneNumbers"]
        scripted = self.script.get(phone)
        if scripted == "lost":
            return 200, None
        if scripted and scripted != "drop":
            return 200, self._body(scripted, f"scripted {scripted}")
        problem = self._check_message(
            phone, params["SignName"], params["TemplateCode"], params.get("TemplateParam")
        )
        if problem is not None:
            return problem
        record = self._record(
            phone,
            params["SignName"],
            params["TemplateCode"],
            json.loads(params.get("TemplateParam") or "{}"),
            params.get("OutId"),
        )
        if scripted == "drop":
            return 200, None
        return 200, {
            "RequestId": str(uuid.uuid4()),
            "Code": "OK",
            "Message": "OK",
            "BizId": record.biz_id,
        }

    def send_batch(self, params: dict[str, str]) -> Reply:
        for name in ("PhoneNumberJson", "SignNameJson", "TemplateCode"):
            if not params.get(name):
                return self._error(400, f"Missing{name}", f"{name} is mandatory for this action.")
        phones = json.loads(params["PhoneNumberJson"])
        signs = json.loads(params["SignNameJson"])
        values = json.loads(params.get("TemplateParamJson") or "[]")
        if len(phones) > 100:
            return 200, self._body("isv.MOBILE_COUNT_OVER_LIMIT", "手机号码数量超过限制")
        if len(signs) != len(phones) or (values and len(values) != len(phones)):
            return 200, self._body("isv.INVALID_PARAMETERS", "参数数量不一致")
        biz_id = f"{int(time.time() * 1000)}^{uuid.uuid4().int % 10**9}"
        for index, phone in enumerate(phones):
            raw = json.dumps(values[index]) if values else None
            problem = self._check_message(phone, signs[index], params["TemplateCode"], raw)
            if problem is not None:
                return problem
        for index, phone in enumerate(phones):
            self._record(
                phone,
                signs[index],
                params["TemplateCode"],
                values[index] if values else {},
                params.get("OutId"),
                biz_id,
            )
        return 200, {"RequestId": str(uuid.uuid4()), "Code": "OK", "Message": "OK", "BizId": biz_id}

    def _record(
        self,
        phone: str,
        sign: str,
        code: str,
        values: dict[str, str],
        out_id: str | None,
        biz_id: str | None = None,
    ) -> SentSms:
        record = SentSms(
            phone=phone,
            sign_name=sign,
            template_code=code,
            params=values,
            out_id=out_id,
            biz_id=biz_id or f"{int(time.time() * 1000)}^{uuid.uuid4().int % 10**9}",
            send_date=clock.now().astimezone(_SHANGHAI).strftime("%Y%m%d"),
        )
        self.sent.append(record)
        return record

    def query(self, params: dict[str, str]) -> Reply:
        for name in ("PhoneNumber", "SendDate", "PageSize", "CurrentPage"):
            if not params.get(name):
                return self._error(400, f"Missing{name}", f"{name} is mandatory for this action.")
        rows = [
            {
                "PhoneNum": s.phone,
                "SendStatus": s.status,
                "ErrCode": "DELIVERED" if s.status == 3 else "",
                "TemplateCode": s.template_code,
                "Content": f"【{s.sign_name}】...",
                "SendDate": s.send_date,
                "ReceiveDate": s.send_date,
                "OutId": s.out_id,
            }
            for s in self.sent
            if s.phone == params["PhoneNumber"] and s.send_date == params["SendDate"]
        ]
        return 200, {
            "RequestId": str(uuid.uuid4()),
            "Code": "OK",
            "Message": "OK",
            "TotalCount": len(rows),
            "SmsSendDetailDTOs": {"SmsSendDetailDTO": rows},
        }


# WeCom and DingTalk robots


@dataclass
class FakeRobots:
    """`/wecom/send?key=K` and `/dingtalk/send?access_token=T&timestamp&sign` like the real
    endpoints; each robot takes at most `per_minute` posts a minute (by the test clock)."""

    wecom_key: str = "wecom-test-key"
    dingtalk_token: str = "dingtalk-test-token"
    dingtalk_secret: str = "SECdingtalk-test-secret"
    per_minute: int = 20
    posts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.server = FakeServer(self.handle)
        self._times: dict[str, list[datetime]] = {}

    @property
    def wecom_url(self) -> str:
        return f"{self.server.url}/wecom/send?key={self.wecom_key}"

    @property
    def dingtalk_url(self) -> str:
        return f"{self.server.url}/dingtalk/send?access_token={self.dingtalk_token}"

    def stop(self) -> None:
        self.server.stop()

    def _fail(self, errcode: int, errmsg: str) -> Reply:
        answer = {"errcode": errcode, "errmsg": errmsg}
        self.errors.append(answer)
        return 200, answer

    def _rate_limited(self, robot: str) -> bool:
        now = clock.now()
        recent = [t for t in self._times.get(robot, []) if t > now - timedelta(minutes=1)]
        self._times[robot] = recent
        if len(recent) >= self.per_minute:
            return True
        recent.append(now)
        return False

    def handle(self, request: Request) -> Reply:
        try:
            body = json.loads(request.body)
        except ValueError:
            return self._fail(40001 if "wecom" in request.path else 300001, "invalid json")
        if request.path == "/wecom/send":
            if request.query.get("key") != self.wecom_key:
                return self._fail(93000, "invalid webhook url")
            kind = body.get("msgtype")
            if kind not in ("text", "markdown") or not isinstance(body.get(kind), dict):
                return self._fail(40008, "invalid message type")
            content = body[kind].get("content")
            if not isinstance(content, str) or not content:
                return self._fail(44004, "empty content")
            if len(content.encode()) > 4096:
                return self._fail(40058, "content exceed max length")
            if self._rate_limited("wecom"):
                return self._fail(45009, "api freq out of limit")
            self.posts.append(("wecom", body))
            return 200, {"errcode": 0, "errmsg": "ok"}
        if request.path == "/dingtalk/send":
            if request.query.get("access_token") != self.dingtalk_token:
                return self._fail(300001, "token is not exist")
            timestamp, sign = request.query.get("timestamp", ""), request.query.get("sign", "")
            if not timestamp.isdigit() or abs(time.time() * 1000 - int(timestamp)) > 3600_000:
                return self._fail(310000, "sign not match, more: [timestamp expired]")
            to_sign = f"{timestamp}\n{self.dingtalk_secret}".encode()
            digest = hmac.new(self.dingtalk_secret.encode(), to_sign, hashlib.sha256).digest()
            if not hmac.compare_digest(unquote(sign), base64.b64encode(digest).decode()):
                return self._fail(310000, "sign not match")
            if body.get("msgtype") != "markdown":
                return self._fail(400105, "unsupported msgtype")
            markdown = body.get("markdown") or {}
            if not markdown.get("title") or not markdown.get("text"):
                return self._fail(400006, "markdown title and text are required")
            if self._rate_limited("dingtalk"):
                return self._fail(130101, "send too fast, exceed 20 times per minute")
            self.posts.append(("dingtalk", body))
            return 200, {"errcode": 0, "errmsg": "ok"}
        return 404, {"errcode": 404, "errmsg": "not found"}


# Webhook receiver


@dataclass
class WebhookReceiver:
    """Checks X-Nurture-Signature with the endpoint's secret; answers scripted statuses."""

    secrets: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    bad_signatures: int = 0

    def __post_init__(self) -> None:
        self.server = FakeServer(self.handle)

    @property
    def url(self) -> str:
        return f"{self.server.url}/hook"

    def stop(self) -> None:
        self.server.stop()

    def handle(self, request: Request) -> Reply:
        timestamp = request.headers.get("x-nurture-timestamp", "")
        given = request.headers.get("x-nurture-signature", "")
        valid = any(
            hmac.compare_digest(
                given,
                "v1="
                + hmac.new(
                    s.encode(), timestamp.encode() + b"." + request.body, hashlib.sha256
                ).hexdigest(),
            )
            for s in self.secrets
        )
        if not valid or abs(time.time() - int(timestamp or 0)) > 300:
            self.bad_signatures += 1
            return 401, {"error": "bad signature"}
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            self.received.append(json.loads(request.body))
        return status, {"status": status}
