"""Enrichment of every captured event: device and bot from the user agent, the anonymised IP,
and the marketing touch (source, medium, campaign, click id and channel) of a page view.

Channels follow GA4's default channel grouping, extended with the search engines and social
platforms that matter in China.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from user_agents import parse as parse_ua

from capture.identity import strip_control_characters

MAX_VALUE_LENGTH = 200
# ua-parser runs many regexes over the whole string: a bound keeps a hostile header cheap.
MAX_USER_AGENT_LENGTH = 1000
MAX_IP_LENGTH = 64
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
DOTTED_QUAD = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}")


@dataclass(frozen=True)
class DeviceInfo:
    device_type: str  # "desktop" | "mobile" | "tablet" | "bot" | "other"
    os: str | None
    browser: str | None
    is_bot: bool
    bot_name: str | None


UNKNOWN_DEVICE = DeviceInfo("other", None, None, is_bot=False, bot_name=None)

# Crawlers and HTTP clients that ua-parser misses or names unevenly; the first match names the bot.
BOT_SIGNATURES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern, re.IGNORECASE))
    for name, pattern in (
        ("Baiduspider", r"baiduspider"),
        ("Sogou Spider", r"sogou[\w ]*spider"),
        ("360Spider", r"360spider|haosouspider"),
        ("YisouSpider", r"yisouspider"),
        ("Bytespider", r"bytespider"),
        ("HeadlessChrome", r"headlesschrome"),
        ("PhantomJS", r"phantomjs"),
        ("python-requests", r"python-requests"),
        ("Python-urllib", r"python-urllib"),
        ("python-httpx", r"python-httpx"),
        ("aiohttp", r"aiohttp"),
        ("Scrapy", r"scrapy"),
        ("Go-http-client", r"go-http-client"),
        ("curl", r"^curl/"),
        ("Wget", r"^wget/"),
    )
)

# In-app browsers that ua-parser reports as the underlying WebView (WeChat on Android).
IN_APP_BROWSERS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern, re.IGNORECASE))
    for name, pattern in (
        ("WeCom", r"wxwork/(\d+\.\d+)"),
        ("WeChat", r"micromessenger/(\d+\.\d+)"),
        ("DingTalk", r"dingtalk/(\d+\.\d+)"),
    )
)


def parse_user_agent(user_agent: str | None) -> DeviceInfo:
    """Device type, OS, browser and bot flag of a User-Agent header (results are cached)."""
    if not user_agent or not user_agent.strip():
        return UNKNOWN_DEVICE
    return _parse_bounded_user_agent(user_agent[:MAX_USER_AGENT_LENGTH])


@lru_cache(maxsize=4096)
def _parse_bounded_user_agent(user_agent: str) -> DeviceInfo:
    parsed = parse_ua(user_agent)
    bot_name = next(
        (name for name, pattern in BOT_SIGNATURES if pattern.search(user_agent)),
        parsed.browser.family if parsed.is_bot else None,
    )
    if bot_name is not None:
        device_type = "bot"
    elif parsed.is_tablet:
        device_type = "tablet"
    elif parsed.is_mobile:
        device_type = "mobile"
    elif parsed.is_pc:
        device_type = "desktop"
    else:
        device_type = "other"
    return DeviceInfo(
        device_type=device_type,
        os=_with_version(parsed.os.family, parsed.os.version_string, parts=2),
        browser=_in_app_browser(user_agent)
        or _with_version(parsed.browser.family, parsed.browser.version_string, parts=1),
        is_bot=bot_name is not None,
        bot_name=bot_name,
    )


def _in_app_browser(user_agent: str) -> str | None:
    for name, pattern in IN_APP_BROWSERS:
        if match := pattern.search(user_agent):
            return f"{name} {match.group(1)}"
    return None


def _with_version(family: str, version: str, parts: int) -> str | None:
    if family == "Other":
        return None
    short_version = ".".join(version.split(".")[:parts])
    return f"{family} {short_version}" if short_version else family


def anonymize_ip(ip: object) -> str | None:
    """Zeroes the host part of an address: the last octet of IPv4, all but 48 bits of IPv6
    (Google Analytics' rule); None for anything that is not an IP address."""
    if not isinstance(ip, str) or len(ip) > MAX_IP_LENGTH:
        return None
    ip = ip.strip()
    if is_dotted_quad(ip):
        return ip[: ip.rindex(".")] + ".0"
    return _anonymize_ip_text(ip)


def is_dotted_quad(ip: str) -> bool:
    """Whether `ip` is an IPv4 address written as `ipaddress` writes it (no leading zeros):
    the common case, checked without the cost of parsing it with `ipaddress`."""
    return DOTTED_QUAD.fullmatch(ip) is not None


@lru_cache(maxsize=4096)
def _anonymize_ip_text(ip: str) -> str | None:
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network((address, prefix), strict=False).network_address)


CHANNELS = (
    "paid_search",
    "organic_search",
    "paid_social",
    "organic_social",
    "email",
    "sms",
    "display",
    "affiliate",
    "referral",
    "direct",
    "other",
)


@dataclass(frozen=True)
class Touch:
    channel: str
    source: str | None
    medium: str | None
    campaign: str | None
    term: str | None
    content: str | None
    click_id_kind: str | None
    click_id: str | None
    referrer_host: str | None


# Sites by the short source name they report, with the hosts whose subdomains belong to them
# ("google.*" means any country domain). The longest matching host wins: tieba.baidu.com is
# social although baidu.com is search.
SEARCH_SITES: dict[str, tuple[str, ...]] = {
    "baidu": ("baidu.com",),
    "sogou": ("sogou.com",),
    "360": ("so.com", "360.cn", "haosou.com"),
    "shenma": ("sm.cn",),
    "bing": ("bing.com",),
    "google": ("google.*",),
    "yahoo": ("yahoo.*",),
    "yandex": ("yandex.*", "ya.ru"),
    "duckduckgo": ("duckduckgo.com",),
}
SOCIAL_SITES: dict[str, tuple[str, ...]] = {
    "wechat": ("weixin.qq.com", "wx.qq.com", "wechat.com", "servicewechat.com"),
    "weibo": ("weibo.com", "weibo.cn", "t.cn"),
    "douyin": ("douyin.com", "iesdouyin.com"),
    "xiaohongshu": ("xiaohongshu.com", "xhslink.com"),
    "zhihu": ("zhihu.com",),
    "bilibili": ("bilibili.com", "b23.tv"),
    "kuaishou": ("kuaishou.com", "gifshow.com"),
    "toutiao": ("toutiao.com",),
    "tieba": ("tieba.baidu.com",),
    "facebook": ("facebook.com", "fb.com", "fb.me"),
    "instagram": ("instagram.com",),
    "linkedin": ("linkedin.com", "lnkd.in"),
    "twitter": ("twitter.com", "x.com", "t.co"),
    "youtube": ("youtube.com", "youtu.be"),
    "tiktok": ("tiktok.com",),
    "reddit": ("reddit.com",),
}
# Other spellings of those sources seen in utm_source.
SOURCE_ALIASES = {
    "weixin": "wechat",
    "wx": "wechat",
    "micromessenger": "wechat",
    "xhs": "xiaohongshu",
    "redbook": "xiaohongshu",
    "rednote": "xiaohongshu",
    "360search": "360",
    "qihoo": "360",
    "fb": "facebook",
    "ig": "instagram",
    "x": "twitter",
}


@dataclass(frozen=True)
class ClickIdKind:
    param: str
    source: str
    paid: bool  # fbclid is added to every outbound Facebook link, so it alone is not an ad


CLICK_ID_KINDS = (
    ClickIdKind("gclid", "google", paid=True),
    ClickIdKind("wbraid", "google", paid=True),
    ClickIdKind("gbraid", "google", paid=True),
    ClickIdKind("bd_vid", "baidu", paid=True),
    ClickIdKind("qhclickid", "360", paid=True),
    ClickIdKind("msclkid", "bing", paid=True),
    ClickIdKind("ttclid", "tiktok", paid=True),
    ClickIdKind("twclid", "twitter", paid=True),
    ClickIdKind("li_fat_id", "linkedin", paid=True),
    ClickIdKind("fbclid", "facebook", paid=False),
)

PAID_MEDIUM = re.compile(r"^(.*cp.*|ppc|retargeting|paid.*)$")
EMAIL = re.compile(r"^(email|e-mail|e_mail|e mail)$")
DISPLAY_MEDIUMS = frozenset({"display", "banner", "expandable", "interstitial", "cpm"})
SOCIAL_MEDIUMS = frozenset(
    {"social", "social-network", "social-media", "sm", "social network", "social media"}
)
REFERRAL_MEDIUMS = frozenset({"referral", "app", "link"})
NO_MEDIUM = frozenset({"", "(none)", "(not set)"})
COUNTRY_DOMAIN = re.compile(r"[a-z]{2,3}|(?:co|com)\.[a-z]{2}")

SOURCE_KINDS = {name: "search" for name in SEARCH_SITES} | {name: "social" for name in SOCIAL_SITES}
SITE_BY_HOST = {
    host: name
    for sites in (SEARCH_SITES, SOCIAL_SITES)
    for name, hosts in sites.items()
    for host in hosts
    if not host.endswith(".*")
}
SITE_BY_BRAND = {
    host.removesuffix(".*"): name
    for name, hosts in SEARCH_SITES.items()
    for host in hosts
    if host.endswith(".*")
}


def touch_for(url: object, referrer: object, campaign: object = None) -> Touch:
    """The marketing touch of a page view, from its URL's UTM parameters and click ids, the
    campaign a Segment client sent in `context.campaign` (URL parameters win), and the referrer.
    Values of any other type than these count as absent."""
    url = url if isinstance(url, str) else None
    referrer = referrer if isinstance(referrer, str) else None
    params = _query_params(url)
    given = campaign if isinstance(campaign, dict) else {}
    source = _normalize_source(_utm(params, given, "source", "source"))
    medium = (_utm(params, given, "medium", "medium") or "").lower() or None
    click_kind, click_id = _click_id(params)
    referrer_host = _host(referrer)
    if referrer_host is not None and _same_host(referrer_host, _host(url)):
        referrer_host = None

    if medium is None and click_kind is not None:
        source = source or click_kind.source
        medium = "cpc" if click_kind.paid else None
    if source is None and referrer_host is not None:
        source = _site_for_host(referrer_host) or referrer_host.removeprefix("www.")
        if medium is None:
            medium = "organic" if SOURCE_KINDS.get(source) == "search" else "referral"

    return Touch(
        channel=_channel(source, medium),
        source=_clean(source),
        medium=medium,
        campaign=_utm(params, given, "campaign", "name"),
        term=_utm(params, given, "term", "term"),
        content=_utm(params, given, "content", "content"),
        click_id_kind=click_kind.param if click_kind else None,
        click_id=click_id,
        referrer_host=_clean(referrer_host),
    )


def _utm(params: dict[str, str], given: dict[Any, Any], name: str, campaign_key: str) -> str | None:
    """A UTM value from the URL's parameters, else from the client's campaign."""
    if not (params or given):
        return None  # most landings carry no campaign at all
    return _clean(params.get(f"utm_{name}")) or _clean(given.get(campaign_key))


def _click_id(params: dict[str, str]) -> tuple[ClickIdKind | None, str | None]:
    if not params:
        return None, None
    for kind in CLICK_ID_KINDS:
        if value := _clean(params.get(kind.param)):
            return kind, value
    return None, None


def _channel(source: str | None, medium: str | None) -> str:
    """GA4's default channel rules, in GA4's order, folded into our channel names."""
    medium = medium or ""
    kind = SOURCE_KINDS.get(source or "")
    paid = PAID_MEDIUM.match(medium) is not None
    if source in (None, "(direct)") and medium in NO_MEDIUM:
        return "direct"
    if paid and kind == "search":
        return "paid_search"
    if paid and kind == "social":
        return "paid_social"
    if medium in DISPLAY_MEDIUMS:
        return "display"
    if paid:
        return "other"
    if kind == "social" or medium in SOCIAL_MEDIUMS:
        return "organic_social"
    if kind == "search" or medium == "organic":
        return "organic_search"
    if medium in REFERRAL_MEDIUMS:
        return "referral"
    if EMAIL.match(source or "") or EMAIL.match(medium):
        return "email"
    if medium == "affiliate":
        return "affiliate"
    if "sms" in (source, medium):
        return "sms"
    return "other"


def _normalize_source(value: str | None) -> str | None:
    if value is None:
        return None
    source = value.lower()
    source = SOURCE_ALIASES.get(source, source)
    if "." in source:
        return _site_for_host(source) or source
    return source


def _site_for_host(host: str) -> str | None:
    labels = host.split(".")
    for start in range(len(labels) - 1):
        if site := SITE_BY_HOST.get(".".join(labels[start:])):
            return site
        brand_site = SITE_BY_BRAND.get(labels[start])
        if brand_site and COUNTRY_DOMAIN.fullmatch(".".join(labels[start + 1 :])):
            return brand_site
    return None


def _same_host(referrer_host: str, page_host: str | None) -> bool:
    return page_host is not None and (
        referrer_host.removeprefix("www.") == page_host.removeprefix("www.")
    )


def _query_params(url: str | None) -> dict[str, str]:
    """Query parameters by lowercased name; the first of repeated names wins."""
    if not isinstance(url, str) or "?" not in url:
        return {}
    params: dict[str, str] = {}
    try:
        query = urlsplit(url.strip()).query
    except ValueError:
        return {}
    # parse_qsl's rules, spelled out: it is a third of the cost of a touch, spent mostly on
    # generality (separators, limits, errors) that a query string of a page view never needs.
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if not value:
            continue  # parse_qsl drops names without a value
        if "%" in name or "+" in name:
            name = unquote_plus(name)
        if "%" in value or "+" in value:
            value = unquote_plus(value)
        params.setdefault(name.lower(), value)
    return params


# The host of a plain http(s) URL, read without urlsplit: referrers are mostly unique strings
# (search result links), so its cache never hits, and a split costs half of a whole touch.
# Anything else (other schemes, user info, IPv6, stray spaces) goes to urlsplit.
PLAIN_URL_HOST = re.compile(r"https?://([A-Za-z0-9.-]+)(?::[0-9]*)?(?=[/?#]|$)")


def _host(url: str | None) -> str | None:
    if not isinstance(url, str) or not url.strip():
        return None
    plain = PLAIN_URL_HOST.match(url)
    if plain is not None:
        host = plain.group(1).lower()
    else:
        try:
            host = urlsplit(url.strip()).hostname
        except ValueError:
            return None
    if not host:
        return None
    return host.rstrip(".") or None


def _clean(value: Any) -> str | None:
    if value is None or isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    text = strip_control_characters(str(value)).strip()[:MAX_VALUE_LENGTH]
    return text or None
