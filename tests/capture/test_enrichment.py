from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capture.enrichment import (
    CHANNELS,
    MAX_VALUE_LENGTH,
    DeviceInfo,
    Touch,
    _host,
    _query_params,
    anonymize_ip,
    parse_user_agent,
    touch_for,
)

CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
SAFARI_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Safari/605.1.15"
)
IPHONE_SAFARI = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
)
ANDROID_CHROME = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6099.144 Mobile Safari/537.36"
)
ANDROID_WECHAT = (
    "Mozilla/5.0 (Linux; Android 13; V2049A Build/TP1A.220624.014; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/107.0.5304.141 Mobile Safari/537.36 XWEB/5023 "
    "MMWEBSDK/20230303 MMWEBID/4949 MicroMessenger/8.0.34.2340(0x2800225D) WeChat/arm64 "
    "Weixin NetType/WIFI Language/zh_CN ABI/arm64"
)
IPHONE_WECHAT = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.40(0x18002831) NetType/WIFI "
    "Language/zh_CN"
)
WINDOWS_WECOM = (
    "Mozilla/5.0 (Windows NT 10.0; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/81.0.4044.138 Safari/537.36 wxwork/4.1.16 MicroMessenger/7.0.1 Language/zh"
)
IPAD_SAFARI = (
    "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/16.6 Mobile/15E148 Safari/604.1"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
GOOGLEBOT_SMARTPHONE = (
    "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0.6099.71 Mobile Safari/537.36 "
    "(compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
)
BAIDUSPIDER = "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)"
BAIDUSPIDER_MOBILE = (
    "Mozilla/5.0 (Linux;u;Android 4.2.2;zh-cn;) AppleWebKit/534.46 (KHTML,like Gecko) "
    "Version/5.1 Mobile Safari/10600.6.3 "
    "(compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)"
)
BYTESPIDER = (
    "Mozilla/5.0 (Linux; Android 5.0) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Mobile Safari/537.36 (compatible; Bytespider; spider-feedback@bytedance.com)"
)
SOGOU_SPIDER = "Sogou web spider/4.0(+http://www.sogou.com/docs/help/webmasters.htm#07)"
SPIDER_360 = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/50.0.2661.102 Safari/537.36; 360Spider"
)
YISOU_SPIDER = (
    "Mozilla/5.0 (Linux; U; Android 5.1.1; zh-CN; ) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Version/4.0 Chrome/57.0.2987.108 YisouSpider/5.0 Safari/537.36"
)
HEADLESS_CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/120.0.6099.28 Safari/537.36"
)


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        (CHROME_WINDOWS, DeviceInfo("desktop", "Windows 10", "Chrome 120", False, None)),
        (SAFARI_MAC, DeviceInfo("desktop", "Mac OS X 10.15", "Safari 17", False, None)),
        (IPHONE_SAFARI, DeviceInfo("mobile", "iOS 17.1", "Mobile Safari 17", False, None)),
        (ANDROID_CHROME, DeviceInfo("mobile", "Android 14", "Chrome Mobile 120", False, None)),
        (ANDROID_WECHAT, DeviceInfo("mobile", "Android 13", "WeChat 8.0", False, None)),
        (IPHONE_WECHAT, DeviceInfo("mobile", "iOS 16.6", "WeChat 8.0", False, None)),
        (WINDOWS_WECOM, DeviceInfo("desktop", "Windows 10", "WeCom 4.1", False, None)),
        (IPAD_SAFARI, DeviceInfo("tablet", "iOS 16.6", "Mobile Safari 16", False, None)),
        (GOOGLEBOT, DeviceInfo("bot", None, "Googlebot 2", True, "Googlebot")),
        (GOOGLEBOT_SMARTPHONE, DeviceInfo("bot", "Android 6.0", "Googlebot 2", True, "Googlebot")),
        (BAIDUSPIDER, DeviceInfo("bot", None, "Baiduspider 2", True, "Baiduspider")),
        (
            BAIDUSPIDER_MOBILE,
            DeviceInfo("bot", "Android 4.2", "Baiduspider 2", True, "Baiduspider"),
        ),
        (BYTESPIDER, DeviceInfo("bot", "Android 5.0", "Bytespider", True, "Bytespider")),
        (SOGOU_SPIDER, DeviceInfo("bot", None, "Sogou web spider 4", True, "Sogou Spider")),
        (SPIDER_360, DeviceInfo("bot", "Windows 10", "360Spider", True, "360Spider")),
        (YISOU_SPIDER, DeviceInfo("bot", "Android 5.1", "YisouSpider 5", True, "YisouSpider")),
        (HEADLESS_CHROME, DeviceInfo("bot", "Linux", "HeadlessChrome 120", True, "HeadlessChrome")),
        ("curl/8.4.0", DeviceInfo("bot", None, "curl 8", True, "curl")),
        (
            "python-requests/2.31.0",
            DeviceInfo("bot", None, "Python Requests 2", True, "python-requests"),
        ),
        ("Wget/1.21.4", DeviceInfo("bot", None, "Wget 1", True, "Wget")),
        ("Go-http-client/2.0", DeviceInfo("bot", None, "Go-http-client 2", True, "Go-http-client")),
    ],
)
def test_parse_user_agent(user_agent, expected):
    assert parse_user_agent(user_agent) == expected


@pytest.mark.parametrize("user_agent", [None, "", "   ", "asdf", "\x00\x01"])
def test_missing_or_unknown_user_agent_is_other_and_not_a_bot(user_agent):
    # Segment's server-side libraries send no user agent: they are not bots.
    assert parse_user_agent(user_agent) == DeviceInfo("other", None, None, False, None)


def test_huge_user_agent_is_parsed_from_its_start():
    assert parse_user_agent(CHROME_WINDOWS + " x" * 50_000).browser == "Chrome 120"


def test_user_agent_results_are_cached():
    first = parse_user_agent(IPHONE_SAFARI)
    assert parse_user_agent(IPHONE_SAFARI) is first


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("203.0.113.57", "203.0.113.0"),
        ("  8.8.8.8 ", "8.8.8.0"),
        ("10.0.0.255", "10.0.0.0"),
        ("0.0.0.0", "0.0.0.0"),
        ("255.255.255.255", "255.255.255.0"),
        ("010.1.2.3", None),  # leading zeros are ambiguous (octal to some parsers)
        ("1.2.3.256", None),
        ("1.2.3.4.5", None),
        ("2001:db8:85a3:8d3:1319:8a2e:370:7348", "2001:db8:85a3::"),
        ("2001:0DB8:ABCD:0012:0000:0000:0000:0001", "2001:db8:abcd::"),
        ("240e:3b7:3272:d8d0:db09:c067:8d59:539e", "240e:3b7:3272::"),
        ("::1", "::"),
        ("fe80::1%eth0", "fe80::"),
        ("::ffff:198.51.100.23", "198.51.100.0"),
        ("1.2.3", None),
        ("256.1.1.1", None),
        ("1.2.3.4:8080", None),
        ("example.com", None),
        ("", None),
        (None, None),
        (12345, None),
    ],
)
def test_anonymize_ip(ip, expected):
    assert anonymize_ip(ip) == expected


PAGE = "https://www.acme.cn/pricing"

# (page URL, referrer, expected channel, source, medium, click id kind)
TOUCH_CASES = [
    # Direct: nothing to go on, an explicit (direct)/(none), or a click within the site.
    (PAGE, None, "direct", None, None, None),
    (PAGE, "", "direct", None, None, None),
    (PAGE + "?utm_source=(direct)&utm_medium=(none)", None, "direct", "(direct)", "(none)", None),
    (PAGE, "https://www.acme.cn/", "direct", None, None, None),
    (PAGE, "https://acme.cn/blog?x=1", "direct", None, None, None),
    # Organic search from search engines' referrers, Chinese and international.
    (PAGE, "https://www.baidu.com/link?url=abc", "organic_search", "baidu", "organic", None),
    (PAGE, "https://m.baidu.com/from=844b/s?word=crm", "organic_search", "baidu", "organic", None),
    (PAGE, "https://www.sogou.com/web?query=crm", "organic_search", "sogou", "organic", None),
    (PAGE, "https://m.so.com/s?q=crm", "organic_search", "360", "organic", None),
    (PAGE, "https://yz.m.sm.cn/s?q=crm", "organic_search", "shenma", "organic", None),
    (PAGE, "https://cn.bing.com/search?q=crm", "organic_search", "bing", "organic", None),
    (PAGE, "https://www.google.com.hk/", "organic_search", "google", "organic", None),
    (PAGE, "https://www.google.co.uk/", "organic_search", "google", "organic", None),
    (PAGE, "https://search.yahoo.co.jp/", "organic_search", "yahoo", "organic", None),
    (PAGE, "https://yandex.ru/search/?text=crm", "organic_search", "yandex", "organic", None),
    (PAGE, "https://duckduckgo.com/", "organic_search", "duckduckgo", "organic", None),
    (
        PAGE + "?utm_source=baidu&utm_medium=organic",
        None,
        "organic_search",
        "baidu",
        "organic",
        None,
    ),
    (
        PAGE + "?utm_source=newsletter&utm_medium=organic",
        None,
        "organic_search",
        "newsletter",
        "organic",
        None,
    ),
    # Paid search: a paid medium from a search engine, or a search engine's click id.
    (
        PAGE + "?utm_source=baidu&utm_medium=cpc&utm_campaign=crm",
        None,
        "paid_search",
        "baidu",
        "cpc",
        None,
    ),
    (PAGE + "?utm_source=Baidu&utm_medium=OCPC", None, "paid_search", "baidu", "ocpc", None),
    (PAGE + "?utm_source=sogou&utm_medium=ppc", None, "paid_search", "sogou", "ppc", None),
    (
        PAGE + "?utm_source=so.com&utm_medium=paidsearch",
        None,
        "paid_search",
        "360",
        "paidsearch",
        None,
    ),
    (PAGE + "?utm_source=shenma&utm_medium=cpc", None, "paid_search", "shenma", "cpc", None),
    (
        PAGE + "?bd_vid=11451419198",
        "https://www.baidu.com/",
        "paid_search",
        "baidu",
        "cpc",
        "bd_vid",
    ),
    (PAGE + "?bd_vid=11451419198", None, "paid_search", "baidu", "cpc", "bd_vid"),
    (PAGE + "?gclid=Cj0KCQiA", None, "paid_search", "google", "cpc", "gclid"),
    (PAGE + "?wbraid=CjgKCAiA", None, "paid_search", "google", "cpc", "wbraid"),
    (PAGE + "?msclkid=8a1f", "https://www.bing.com/", "paid_search", "bing", "cpc", "msclkid"),
    (PAGE + "?qhclickid=77ab", None, "paid_search", "360", "cpc", "qhclickid"),
    (PAGE + "?utm_source=google&gclid=Cj0KCQiA", None, "paid_search", "google", "cpc", "gclid"),
    (PAGE + "?gclid=Cj0KCQiA&utm_medium=email", None, "email", None, "email", "gclid"),
    (PAGE + "?utm_medium=cpc", "https://www.baidu.com/s", "paid_search", "baidu", "cpc", None),
    # Organic social: social sites' referrers and sources, and social mediums.
    (PAGE, "https://mp.weixin.qq.com/s/abc", "organic_social", "wechat", "referral", None),
    (PAGE, "https://weibo.com/u/123", "organic_social", "weibo", "referral", None),
    (PAGE, "https://t.cn/A6abc", "organic_social", "weibo", "referral", None),
    (PAGE, "https://www.douyin.com/video/1", "organic_social", "douyin", "referral", None),
    (
        PAGE,
        "https://www.xiaohongshu.com/explore/1",
        "organic_social",
        "xiaohongshu",
        "referral",
        None,
    ),
    (PAGE, "http://xhslink.com/a/b", "organic_social", "xiaohongshu", "referral", None),
    (PAGE, "https://zhuanlan.zhihu.com/p/1", "organic_social", "zhihu", "referral", None),
    (PAGE, "https://www.bilibili.com/video/BV1", "organic_social", "bilibili", "referral", None),
    (PAGE, "https://v.kuaishou.com/abc", "organic_social", "kuaishou", "referral", None),
    (PAGE, "https://m.toutiao.com/is/abc", "organic_social", "toutiao", "referral", None),
    (PAGE, "https://tieba.baidu.com/p/1", "organic_social", "tieba", "referral", None),
    (PAGE, "https://l.facebook.com/", "organic_social", "facebook", "referral", None),
    (PAGE, "https://www.linkedin.com/feed/", "organic_social", "linkedin", "referral", None),
    (PAGE, "https://t.co/xyz", "organic_social", "twitter", "referral", None),
    (PAGE, "https://x.com/acme", "organic_social", "twitter", "referral", None),
    (PAGE, "https://www.youtube.com/watch?v=1", "organic_social", "youtube", "referral", None),
    (PAGE, "https://old.reddit.com/r/x", "organic_social", "reddit", "referral", None),
    (PAGE + "?fbclid=IwAR0abc", None, "organic_social", "facebook", None, "fbclid"),
    (
        PAGE + "?utm_source=weixin&utm_medium=article",
        None,
        "organic_social",
        "wechat",
        "article",
        None,
    ),
    (PAGE + "?utm_source=MicroMessenger", None, "organic_social", "wechat", None, None),
    (PAGE + "?utm_source=xhs", None, "organic_social", "xiaohongshu", None, None),
    (PAGE + "?utm_source=redbook", None, "organic_social", "xiaohongshu", None, None),
    (PAGE + "?utm_source=forum&utm_medium=social", None, "organic_social", "forum", "social", None),
    # Paid social: a paid medium from a social source, or a social network's ad click id.
    (PAGE + "?utm_source=wechat&utm_medium=cpc", None, "paid_social", "wechat", "cpc", None),
    (
        PAGE + "?utm_source=douyin&utm_medium=paid_social",
        None,
        "paid_social",
        "douyin",
        "paid_social",
        None,
    ),
    (PAGE + "?utm_source=weibo&utm_medium=cpm", None, "paid_social", "weibo", "cpm", None),
    (
        PAGE + "?utm_source=facebook&utm_medium=retargeting",
        None,
        "paid_social",
        "facebook",
        "retargeting",
        None,
    ),
    (PAGE + "?ttclid=E.C.P.abc", None, "paid_social", "tiktok", "cpc", "ttclid"),
    # Email, SMS, display, affiliate, referral, other.
    (PAGE + "?utm_source=newsletter&utm_medium=email", None, "email", "newsletter", "email", None),
    (PAGE + "?utm_source=e-mail&utm_medium=march", None, "email", "e-mail", "march", None),
    (PAGE + "?utm_source=aliyun&utm_medium=sms", None, "sms", "aliyun", "sms", None),
    (PAGE + "?utm_source=sms", None, "sms", "sms", None, None),
    (PAGE + "?utm_source=dsp&utm_medium=banner", None, "display", "dsp", "banner", None),
    (PAGE + "?utm_source=sina&utm_medium=cpm", None, "display", "sina", "cpm", None),
    (
        PAGE + "?utm_source=partner&utm_medium=affiliate",
        None,
        "affiliate",
        "partner",
        "affiliate",
        None,
    ),
    (
        PAGE + "?utm_source=36kr.com&utm_medium=referral",
        None,
        "referral",
        "36kr.com",
        "referral",
        None,
    ),
    (PAGE, "https://www.36kr.com/p/123", "referral", "36kr.com", "referral", None),
    (PAGE, "https://docs.acme.cn/", "referral", "docs.acme.cn", "referral", None),
    (PAGE + "?utm_source=partner&utm_medium=cpa", None, "other", "partner", "cpa", None),
    (PAGE + "?utm_source=poster&utm_medium=offline", None, "other", "poster", "offline", None),
    (PAGE + "?utm_campaign=spring", None, "direct", None, None, None),
    (
        PAGE + "?utm_campaign=spring",
        "https://www.baidu.com/",
        "organic_search",
        "baidu",
        "organic",
        None,
    ),
]


@pytest.mark.parametrize(
    ("url", "referrer", "channel", "source", "medium", "click_id_kind"), TOUCH_CASES
)
def test_touch_channel_and_source(url, referrer, channel, source, medium, click_id_kind):
    touch = touch_for(url, referrer)
    assert (touch.channel, touch.source, touch.medium, touch.click_id_kind) == (
        channel,
        source,
        medium,
        click_id_kind,
    )


def test_touch_cases_cover_every_channel():
    assert {case[2] for case in TOUCH_CASES} == set(CHANNELS)


def test_touch_reads_every_utm_field_and_the_click_id():
    url = (
        "https://acme.cn/?utm_source=baidu&utm_medium=cpc&utm_campaign=%E6%98%A5%E5%AD%A3"
        "&utm_term=crm+software&utm_content=ad-1&bd_vid=987"
    )
    assert touch_for(url, "https://www.baidu.com/s?wd=crm") == Touch(
        channel="paid_search",
        source="baidu",
        medium="cpc",
        campaign="春季",
        term="crm software",
        content="ad-1",
        click_id_kind="bd_vid",
        click_id="987",
        referrer_host="www.baidu.com",
    )


def test_segment_campaign_context_is_used_when_the_url_has_no_utm():
    campaign = {"name": "spring", "source": "Baidu", "medium": "cpc", "term": "crm", "content": "a"}
    touch = touch_for("https://acme.cn/", None, campaign)
    assert (touch.channel, touch.source, touch.campaign, touch.term, touch.content) == (
        "paid_search",
        "baidu",
        "spring",
        "crm",
        "a",
    )


def test_url_parameters_win_over_the_segment_campaign_context():
    campaign = {"name": "old", "source": "google", "medium": "cpc"}
    touch = touch_for("https://acme.cn/?utm_source=weibo&utm_campaign=new", None, campaign)
    assert (touch.channel, touch.source, touch.medium, touch.campaign) == (
        "paid_social",
        "weibo",
        "cpc",
        "new",
    )


@pytest.mark.parametrize("campaign", [None, {}, "not a dict", {"source": 5, "name": ["x"]}])
def test_odd_campaign_context_is_ignored_safely(campaign):
    assert touch_for("https://acme.cn/", None, campaign).channel in {"direct", "other"}


def test_internal_referrer_is_not_kept():
    touch = touch_for("https://www.acme.cn/a", "https://www.acme.cn/b")
    assert touch.referrer_host is None


def test_values_are_trimmed_stripped_of_control_characters_and_truncated():
    long_campaign = "x" * 500
    url = f"https://acme.cn/?utm_source=%20news%00letter%20&utm_medium=email&utm_campaign={long_campaign}"
    touch = touch_for(url, None)
    assert touch.source == "newsletter"
    assert touch.campaign == "x" * MAX_VALUE_LENGTH


def test_referrer_host_is_truncated():
    host = "a" * 250 + ".example.com"
    touch = touch_for("https://acme.cn/", f"https://{host}/")
    assert touch.channel == "referral"
    assert len(touch.source) == MAX_VALUE_LENGTH
    assert len(touch.referrer_host) == MAX_VALUE_LENGTH


def test_first_of_repeated_parameters_wins_and_names_are_case_insensitive():
    touch = touch_for("https://acme.cn/?UTM_SOURCE=baidu&utm_source=google&utm_medium=cpc", None)
    assert touch.source == "baidu"


@pytest.mark.parametrize(
    ("url", "referrer"),
    [
        (None, None),
        ("", ""),
        ("not a url", "also not"),
        ("http://[::1", "http://[bad"),
        ("https://acme.cn/?utm_source=%ff%fe", "https://%ff/"),
        (12, 34),
        ("android-app://com.tencent.mm/", "android-app://com.tencent.mm/"),
    ],
)
def test_malformed_urls_never_raise(url, referrer):
    assert touch_for(url, referrer).channel in CHANNELS


def test_spoofed_brand_domains_are_not_search_engines():
    assert touch_for(PAGE, "https://google.evil-site.com/").channel == "referral"
    assert touch_for(PAGE, "https://notbaidu.com/").channel == "referral"


QUERY_PIECES = [*"&=%+;#? aZ_-.", "%41", "%e7%ba", "%ZZ", "线", "utm_source", "bd_vid"]


@settings(max_examples=500, deadline=None)
@given(query=st.lists(st.sampled_from(QUERY_PIECES), max_size=30).map("".join))
def test_query_parameters_are_read_as_parse_qsl_reads_them(query):
    url = f"https://www.example.cn/landing?{query}"
    expected: dict[str, str] = {}
    for name, value in parse_qsl(urlsplit(url.strip()).query):
        expected.setdefault(name.lower(), value)
    assert _query_params(url) == expected


def _pick(*choices):
    return st.sampled_from(choices)


URLS = st.tuples(
    _pick("", " ", "\t"),
    _pick("https://", "http://", "HTTPS://", "ftp://", "https:/", "//", ""),
    _pick("", "user@", "a:b@"),
    st.lists(_pick("www", "Baidu", "example", "线", "", "-x", "1"), max_size=4).map(".".join),
    _pick("", ":80", ":", ":8x", ":80:90", "]", "[::1]"),
    _pick("", "/", "/p?q#f", "?x", "#y", " ", "\t/", "\\"),
).map("".join)


@settings(max_examples=1000, deadline=None)
@given(url=URLS)
def test_a_referrers_host_is_read_as_urlsplit_reads_it(url):
    try:
        expected = urlsplit(url.strip()).hostname if url.strip() else None
    except ValueError:
        expected = None
    expected = (expected or "").rstrip(".") or None
    assert _host(url) == expected
