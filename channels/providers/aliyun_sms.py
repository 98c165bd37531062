"""SMS through Aliyun Dysms (`SendSms`, `SendBatchSms`, `QuerySendDetails`, API 2017-05-25) with
the official SDK's `AcsClient` and `CommonRequest`, and the error codes sorted into classes."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers
from aliyunsdkcore.acs_exception.exceptions import ClientException, ServerException
from aliyunsdkcore.client import AcsClient
from aliyunsdkcore.request import CommonRequest

from channels.outcome import Outcome, Result
from channels.settings import ChannelSettings
from core.clock import clock

API_VERSION = "2017-05-25"
BATCH_LIMIT = 100
# Aliyun counts its day and month limits in Beijing time.
ALIYUN_ZONE = ZoneInfo("Asia/Shanghai")

TRANSIENT_CODES = frozenset(
    {
        "isp.SYSTEM_ERROR",
        "isp.GATEWAY_ERROR",
        "Throttling",
        "Throttling.User",
        "Throttling.Api",
        "ServiceUnavailable",
        "InternalError",
        "SDK.ServerUnreachable",
    }
)
ACCOUNT_CODES = frozenset(
    {
        "isv.AMOUNT_NOT_ENOUGH",
        "isv.OUT_OF_SERVICE",
        "isv.ACCOUNT_NOT_EXISTS",
        "isv.ACCOUNT_ABNORMAL",
        "InvalidAccessKeyId.NotFound",
        "InvalidAccessKeySecret",
        "SignatureDoesNotMatch",
        "Forbidden.RAM",
        "isp.RAM_PERMISSION_DENY",
    }
)
INVALID_NUMBER_CODES = frozenset({"isv.MOBILE_NUMBER_ILLEGAL", "isv.DOMESTIC_NUMBER_NOT_SUPPORTED"})


def aliyun_number(e164: str) -> str:
    """Mainland numbers go without +86; others with their country code and no plus."""
    try:
        parsed = phonenumbers.parse(e164, "CN")
    except phonenumbers.NumberParseException:
        return e164.lstrip("+")
    if parsed.country_code == 86:
        return str(parsed.national_number)
    return f"{parsed.country_code}{parsed.national_number}"


def flow_control_until(code: str, now: datetime) -> datetime:
    local = now.astimezone(ALIYUN_ZONE)
    if code == "isv.DAY_LIMIT_CONTROL":
        return datetime.combine(local.date() + timedelta(days=1), time(), tzinfo=ALIYUN_ZONE)
    if code == "isv.MONTH_LIMIT_CONTROL":
        first = local.date().replace(day=1) + timedelta(days=32)
        return datetime.combine(first.replace(day=1), time(), tzinfo=ALIYUN_ZONE)
    # BUSINESS_LIMIT_CONTROL covers the per-number minute/hour/day limits.
    return now + timedelta(hours=1)


def classify(code: str, message: str) -> Outcome:
    reason = f"{code}: {message}"
    if code in TRANSIENT_CODES:
        return Outcome(Result.retry, code, reason)
    if code in ("isv.BUSINESS_LIMIT_CONTROL", "isv.DAY_LIMIT_CONTROL", "isv.MONTH_LIMIT_CONTROL"):
        return Outcome(Result.defer, code, reason, until=flow_control_until(code, clock.now()))
    if code in ACCOUNT_CODES:
        return Outcome(Result.account_problem, code, reason)
    if code in INVALID_NUMBER_CODES:
        return Outcome(Result.invalid_address, code, reason)
    return Outcome(Result.failed, code, reason)


@dataclass(frozen=True)
class SentRecord:
    """One row of QuerySendDetails: what Aliyun knows about a message to a number."""

    out_id: str | None
    status: int  # 1 waiting for the receipt, 2 failed, 3 delivered
    err_code: str | None


class AliyunSms:
    def __init__(self, settings: ChannelSettings) -> None:
        self.settings = settings
        # auto_retry off: SendSms is not idempotent, so we decide ourselves whether to resend.
        self.client = AcsClient(
            settings.aliyun_access_key_id,
            settings.aliyun_access_key_secret,
            settings.aliyun_region,
            auto_retry=False,
            timeout=settings.aliyun_timeout_seconds,
            connect_timeout=min(5.0, settings.aliyun_timeout_seconds),
        )

    def _request(self, action: str, params: Mapping[str, str]) -> CommonRequest:
        request = CommonRequest()
        request.set_accept_format("json")
        request.set_domain(self.settings.aliyun_sms_endpoint)
        request.set_protocol_type(self.settings.aliyun_sms_protocol)
        request.set_method("POST")
        request.set_version(API_VERSION)
        request.set_action_name(action)
        request.add_query_param("RegionId", self.settings.aliyun_region)
        for key, value in params.items():
            request.add_query_param(key, value)
        return request

    def _call(self, action: str, params: Mapping[str, str]) -> dict[str, Any] | Outcome:
        try:
            body = self.client.do_action_with_exception(self._request(action, params))
        except ServerException as exc:
            return classify(exc.get_error_code(), exc.get_error_msg())
        except ClientException as exc:
            # Connection refused and read timeouts both end up here; either way the message may
            # or may not have left, so the caller checks QuerySendDetails before a resend.
            return Outcome(Result.retry, "ambiguous_timeout", f"{exc.get_error_code()}: {exc}")
        answer: dict[str, Any] = json.loads(body)
        return answer

    def send(
        self, phone: str, sign_name: str, template_code: str, params: Mapping[str, str], out_id: str
    ) -> Outcome:
        answer = self._call(
            "SendSms",
            {
                "PhoneNumbers": aliyun_number(phone),
                "SignName": sign_name,
                "TemplateCode": template_code,
                "TemplateParam": json.dumps(dict(params), ensure_ascii=False),
                "OutId": out_id,
            },
        )
        if isinstance(answer, Outcome):
            return answer
        # HTTP 200 with a Code other than OK is a failure, not a success.
        if answer.get("Code") != "OK":
            return classify(str(answer.get("Code")), str(answer.get("Message", "")))
        return Outcome.sent(answer.get("BizId"))

    def send_batch(
        self,
        phones: Sequence[str],
        sign_name: str,
        template_code: str,
        params: Sequence[Mapping[str, str]],
        out_id: str,
    ) -> Outcome:
        if not 0 < len(phones) <= BATCH_LIMIT or len(params) != len(phones):
            raise ValueError(f"a batch holds 1 to {BATCH_LIMIT} numbers, one params each")
        answer = self._call(
            "SendBatchSms",
            {
                "PhoneNumberJson": json.dumps([aliyun_number(p) for p in phones]),
                "SignNameJson": json.dumps([sign_name] * len(phones), ensure_ascii=False),
                "TemplateCode": template_code,
                "TemplateParamJson": json.dumps([dict(p) for p in params], ensure_ascii=False),
                "OutId": out_id,
            },
        )
        if isinstance(answer, Outcome):
            return answer
        if answer.get("Code") != "OK":
            return classify(str(answer.get("Code")), str(answer.get("Message", "")))
        return Outcome.sent(answer.get("BizId"))

    def find_sent(self, phone: str, sent_on: datetime, out_id: str) -> SentRecord | Outcome | None:
        """Looks up whether Aliyun took a message with this OutId (after an ambiguous timeout)."""
        answer = self._call(
            "QuerySendDetails",
            {
                "PhoneNumber": aliyun_number(phone),
                "SendDate": sent_on.astimezone(ALIYUN_ZONE).strftime("%Y%m%d"),
                "PageSize": "50",
                "CurrentPage": "1",
            },
        )
        if isinstance(answer, Outcome):
            return answer
        if answer.get("Code") != "OK":
            return classify(str(answer.get("Code")), str(answer.get("Message", "")))
        details = (answer.get("SmsSendDetailDTOs") or {}).get("SmsSendDetailDTO") or []
        for row in details:
            if row.get("OutId") == out_id:
                return SentRecord(
                    row.get("OutId"), int(row.get("SendStatus", 1)), row.get("ErrCode")
                )
        return None


_client: AliyunSms | None = None


def get_client(settings: ChannelSettings) -> AliyunSms:
    global _client
    if _client is None or _client.settings is not settings:
        _client = AliyunSms(settings)
    return _client
