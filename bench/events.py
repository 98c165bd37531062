"""Realistic Segment traffic for a Chinese B2B site, seeded so every run replays the same:
visitors arriving from Baidu, WeChat, Douyin and the rest, browsing, converting, identifying.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlencode

import orjson

from capture.tracking import envelope_for_single
from core.clock import clock

SITE = "https://www.example.cn"
PAGES = [
    ("/", "示例科技 - 营销自动化平台"),
    ("/pricing", "价格 - 示例科技"),
    ("/solutions/crm", "CRM 线索管理 - 示例科技"),
    ("/solutions/wecom", "企业微信集成 - 示例科技"),
    ("/blog/b2b-lead-nurturing", "B2B 线索培育的五个步骤"),
    ("/cases/manufacturing", "客户案例：制造业 - 示例科技"),
    ("/download/whitepaper-2024", "2024 B2B 营销白皮书下载"),
    ("/demo", "预约演示 - 示例科技"),
]
TRACK_EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("Viewed Pricing", {"plan": "team"}),
    ("Downloaded Whitepaper", {"title": "2024 B2B 营销白皮书"}),
    ("Watched Video", {"video": "product-tour", "seconds": 95}),
    ("Requested Demo", {"product": "crm", "team_size": "50-200"}),
    ("Started Trial", {"plan": "team", "seats": 10}),
]
USER_AGENTS = [
    (
        30,
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Safari/537.36",
    ),
    (
        20,
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
        "like Gecko) Mobile/15E148 MicroMessenger/8.0.47(0x18002f2c) NetType/WIFI Language/zh_CN",
    ),
    (
        15,
        "Mozilla/5.0 (Linux; Android 12; NOH-AN00 Build/HUAWEINOH-AN00) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Version/4.0 Chrome/99.0.4844.88 Mobile Safari/537.36",
    ),
    (
        12,
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) Version/17.4 Safari/605.1.15",
    ),
    (
        8,
        "Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
        "like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
    ),
    (
        6,
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.67",
    ),
    (
        5,
        "Mozilla/5.0 (Linux; Android 13; V2227A) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Version/4.0 Chrome/98.0.4758.102 Mobile Safari/537.36 baiduboxapp/13.50.0.10",
    ),
    (
        2,
        "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)",
    ),
    (1, "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"),
    (1, "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)"),
]
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高"
GIVEN_NAMES = ["伟", "芳", "娜", "敏", "静", "磊", "洋", "艳", "勇", "军", "杰", "娟", "涛", "明"]
COMPANIES = ["上海云启科技有限公司", "深圳智造电子有限公司", "杭州数联信息技术有限公司"]
JOB_TITLES = ["市场总监", "销售经理", "运营负责人", "IT 主管", "总经理"]
SERVER_LIBRARY = {"name": "analytics-python", "version": "2.3.3"}
MOBILE_PREFIXES = ["138", "139", "150", "186", "137", "158", "177", "199"]

Arrival = tuple[dict[str, str], str | None]
T = TypeVar("T")


def _baidu_paid(rng: random.Random) -> Arrival:
    query = {
        "utm_source": "baidu",
        "utm_medium": "cpc",
        "utm_campaign": rng.choice(["brand_crm", "competitor_words", "marketing_automation"]),
        "utm_term": rng.choice(["营销自动化", "crm系统", "线索管理软件"]),
        "bd_vid": f"{rng.getrandbits(64):x}",
    }
    return query, f"https://www.baidu.com/baidu.php?sc.{rng.getrandbits(48):x}"


def _wechat(rng: random.Random) -> Arrival:
    query = {"utm_source": "wechat", "utm_medium": "social", "utm_campaign": "article_0412"}
    return (query if rng.random() < 0.6 else {}), rng.choice(["https://mp.weixin.qq.com/", None])


def _campaign(source: str, medium: str, campaign: str) -> Callable[[random.Random], Arrival]:
    return lambda _rng: (
        {"utm_source": source, "utm_medium": medium, "utm_campaign": campaign},
        None,
    )


def _referred(*referrers: str) -> Callable[[random.Random], Arrival]:
    return lambda rng: ({}, rng.choice(referrers) + f"{rng.randrange(10**6, 10**7)}")


ARRIVALS: list[tuple[int, Callable[[random.Random], Arrival]]] = [
    (20, _baidu_paid),
    (15, _referred("https://www.baidu.com/link?url=")),
    (15, _wechat),
    (5, _campaign("douyin", "paid_social", "spring_launch")),
    (4, _referred("https://www.xiaohongshu.com/explore/")),
    (5, _referred("https://www.zhihu.com/question/")),
    (4, _referred("https://cn.bing.com/search?q=crm&first=")),
    (2, _referred("https://www.sogou.com/link?url=")),
    (2, _referred("https://www.so.com/link?m=")),
    (6, _campaign("newsletter", "email", "2024_06_nurture")),
    (2, _campaign("aliyun_sms", "sms", "webinar_reminder")),
    (5, _referred("https://www.36kr.com/p/", "https://www.woshipm.com/marketing/")),
    (15, lambda _rng: ({}, None)),
]


@dataclass
class Visitor:
    anonymous_id: str
    user_agent: str
    ip: str
    at: datetime
    will_identify: bool
    user_id: str | None = None
    events_left_in_session: int = 0
    page: str | None = None


@dataclass(frozen=True)
class Hit:
    """One message as a client sends it, with the IP the request comes from."""

    message: dict[str, Any]
    ip: str
    sent_at: datetime


class Traffic:
    """Generates hits: ~5 per visitor over a week, in sessions, 15% of visitors identifying."""

    def __init__(self, seed: int, visitors: int, end: datetime) -> None:
        self.rng = random.Random(seed)
        self.end = end
        self.visitors = [self._visitor() for _ in range(visitors)]

    def hits(self, count: int) -> list[Hit]:
        generated = [self._next_hit(self.rng.choice(self.visitors)) for _ in range(count)]
        return sorted(generated, key=lambda hit: hit.sent_at)

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _visitor(self) -> Visitor:
        rng = self.rng
        start = self.end - timedelta(days=rng.uniform(3, 10))
        return Visitor(
            anonymous_id=self._uuid(),
            user_agent=_weighted(rng, USER_AGENTS),
            ip=f"{rng.choice([36, 58, 101, 112, 117, 183, 223])}.{rng.randrange(256)}."
            f"{rng.randrange(256)}.{rng.randrange(1, 255)}",
            at=start,
            will_identify=rng.random() < 0.15,
        )

    def _next_hit(self, visitor: Visitor) -> Hit:
        rng = self.rng
        landing: Arrival | None = None
        if visitor.events_left_in_session == 0:
            visitor.at += timedelta(hours=min(rng.expovariate(1 / 12), 48))
            visitor.events_left_in_session = rng.randint(1, 6)
            visitor.page = None
            landing = _weighted(rng, ARRIVALS)(rng)
        else:
            visitor.at += timedelta(seconds=rng.uniform(5, 240))
        visitor.events_left_in_session -= 1
        timestamp = min(visitor.at, self.end)

        if (
            visitor.will_identify
            and visitor.user_id is None
            and visitor.page
            and rng.random() < 0.4
        ):
            message = self._identify(visitor)
        elif landing is not None or visitor.page is None or rng.random() < 0.75:
            message = self._page(visitor, landing)
        else:
            name, properties = rng.choice(TRACK_EVENTS)
            message = {"type": "track", "event": name, "properties": properties}

        sent_at = timestamp + timedelta(milliseconds=rng.randrange(50, 3000))
        message.update(
            anonymousId=visitor.anonymous_id,
            messageId=self._uuid(),
            timestamp=timestamp.isoformat(timespec="milliseconds"),
            sentAt=sent_at.isoformat(timespec="milliseconds"),
        )
        if visitor.user_id is not None:
            message["userId"] = visitor.user_id
        message["context"] = {
            **message.get("context", {}),
            "userAgent": visitor.user_agent,
            "locale": "zh-CN",
            "library": {"name": "nurture.js", "version": "1.0.0"},
        }
        return Hit(message, visitor.ip, sent_at)

    def _page(self, visitor: Visitor, landing: Arrival | None) -> dict[str, Any]:
        path, title = self.rng.choice(PAGES)
        query, referrer = landing if landing is not None else ({}, visitor.page)
        url = SITE + path + ("?" + urlencode(query) if query else "")
        visitor.page = url
        properties: dict[str, Any] = {"url": url, "path": path, "title": title}
        if referrer:
            properties["referrer"] = referrer
        message: dict[str, Any] = {"type": "page", "name": title, "properties": properties}
        campaign = {k.removeprefix("utm_"): v for k, v in query.items() if k.startswith("utm_")}
        if campaign:
            message["context"] = {"campaign": campaign}
        return message

    def _identify(self, visitor: Visitor) -> dict[str, Any]:
        rng = self.rng
        visitor.user_id = f"crm-{rng.randrange(10**6, 10**7)}"
        number = rng.choice(MOBILE_PREFIXES) + f"{rng.randrange(10**8):08d}"
        phone = rng.choice([number, f"+86 {number[:3]} {number[3:7]} {number[7:]}"])
        return {
            "type": "identify",
            "traits": {
                "email": f"user{rng.randrange(10**7)}@{rng.choice(['qq.com', 'corp-mail.cn'])}",
                "phone": phone,
                "name": rng.choice(SURNAMES) + rng.choice(GIVEN_NAMES),
                "company": rng.choice(COMPANIES),
                "title": rng.choice(JOB_TITLES),
            },
        }


def _weighted(rng: random.Random, choices: list[tuple[int, T]]) -> T:
    return rng.choices([c for _, c in choices], weights=[w for w, _ in choices])[0]


def browser_messages(count: int, visitors: int, seed: int = 1) -> list[dict[str, Any]]:
    """`count` messages as the browser snippet sends them, one per request."""
    return [hit.message for hit in Traffic(seed, visitors, clock.now()).hits(count)]


def server_batch(count: int, seed: int = 1) -> list[dict[str, Any]]:
    """`count` messages as a server-side Segment client batches them: no browser context."""
    hits = Traffic(seed, max(1, count // 5), clock.now()).hits(count)
    return [{**hit.message, "context": {"library": SERVER_LIBRARY, "ip": hit.ip}} for hit in hits]


def queue_entries(count: int, visitors: int, source_id: str, seed: int = 1) -> list[bytes]:
    """`count` events as the tracking API enqueues them, one request (browser call) each."""
    skew = timedelta(minutes=5)
    entries = []
    for hit in Traffic(seed, visitors, clock.now()).hits(count):
        received_at = hit.sent_at + timedelta(milliseconds=40)
        meta = {"sourceId": source_id, "ip": hit.ip, "userAgent": None}
        message = hit.message
        envelope = envelope_for_single(message, message["type"], received_at, meta, skew)
        entries.append(orjson.dumps([envelope]))
    return entries
