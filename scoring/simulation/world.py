"""The simulated market: channels and campaigns with their daily costs, companies, job titles,
site pages, and every true effect the generative process uses (see `process`)."""

from __future__ import annotations

from dataclasses import dataclass

SITE = "https://www.yunqi-tech.cn"


@dataclass(frozen=True)
class Campaign:
    name: str
    channel: str
    utm_source: str | None
    utm_medium: str | None
    daily_cost_cny: float
    weight: float
    referrer: str | None = None


@dataclass(frozen=True)
class Channel:
    name: str
    share: float  # share of first visits
    log_odds_effect: float  # true effect on conversion of having been touched by the channel


CHANNELS = (
    Channel("baidu_paid", 0.20, 0.35),
    Channel("baidu_organic", 0.16, 0.25),
    Channel("wechat", 0.16, 0.15),
    Channel("douyin", 0.10, -0.05),
    Channel("xiaohongshu", 0.07, 0.05),
    Channel("zhihu", 0.07, 0.30),
    Channel("email", 0.06, 0.30),
    Channel("sms", 0.03, 0.10),
    Channel("referral", 0.05, 0.50),
    Channel("direct", 0.10, 0.0),
)
CHANNEL_INDEX = {c.name: i for i, c in enumerate(CHANNELS)}

CAMPAIGNS = (
    Campaign("baidu-brand-keywords", "baidu_paid", "baidu", "cpc", 1800, 0.4),
    Campaign("baidu-industry-keywords", "baidu_paid", "baidu", "cpc", 4200, 0.6),
    Campaign("baidu-seo", "baidu_organic", None, None, 0, 1.0, "https://www.baidu.com/link?url=x9"),
    Campaign("wechat-moments-ads", "wechat", "wechat", "cpc", 2500, 0.55),
    Campaign("wechat-official-account", "wechat", "wechat", "social", 300, 0.45),
    Campaign("douyin-feed-ads", "douyin", "douyin", "cpc", 3000, 1.0),
    Campaign("xiaohongshu-kol-notes", "xiaohongshu", "xiaohongshu", "social", 1200, 1.0),
    Campaign("zhihu-expert-answers", "zhihu", "zhihu", "social", 600, 1.0),
    Campaign("monthly-newsletter", "email", "newsletter", "email", 80, 1.0),
    Campaign("sms-webinar-invite", "sms", "aliyun_sms", "sms", 150, 1.0),
    Campaign("partner-referrals", "referral", None, None, 0, 1.0, "https://www.36kr.com/p/2741"),
    Campaign("direct", "direct", None, None, 0, 1.0),
)
CAMPAIGNS_BY_CHANNEL = {
    c.name: tuple(i for i, k in enumerate(CAMPAIGNS) if k.channel == c.name) for c in CHANNELS
}
NEWSLETTER = next(i for i, k in enumerate(CAMPAIGNS) if k.name == "monthly-newsletter")
DIRECT = next(i for i, k in enumerate(CAMPAIGNS) if k.name == "direct")
# Where returning visits come from: (channel, share); "first" means the first visit's campaign.
RETURN_MIX = (
    ("direct", 0.40),
    ("baidu_organic", 0.20),
    ("first", 0.20),
    ("wechat", 0.10),
    ("zhihu", 0.05),
    ("referral", 0.05),
)


@dataclass(frozen=True)
class Category:
    name: str
    share: float
    log_odds_effect: float


INDUSTRIES = (
    Category("制造业", 0.24, 0.5),
    Category("软件和信息技术", 0.18, 0.4),
    Category("金融", 0.10, 0.3),
    Category("零售和电商", 0.12, 0.0),
    Category("医疗健康", 0.08, 0.1),
    Category("教育", 0.09, -0.3),
    Category("物流", 0.07, 0.1),
    Category("能源", 0.05, 0.2),
    Category("政府和公共事业", 0.07, -0.4),
)


@dataclass(frozen=True)
class SizeBand:
    low: int
    high: int
    share: float
    log_odds_effect: float
    median_deal_cny: float

    @property
    def label(self) -> str:
        return f"{self.low}+" if self.high >= 100_000 else f"{self.low}–{self.high}"


SIZE_BANDS = (
    SizeBand(1, 49, 0.30, -0.6, 30_000),
    SizeBand(50, 199, 0.27, 0.0, 80_000),
    SizeBand(200, 499, 0.18, 0.4, 180_000),
    SizeBand(500, 999, 0.11, 0.6, 300_000),
    SizeBand(1000, 4999, 0.09, 0.7, 500_000),
    SizeBand(5000, 100_000, 0.05, 0.5, 900_000),
)


@dataclass(frozen=True)
class City:
    province: str
    city: str
    share: float
    tier_one: bool


CITIES = (
    City("北京", "北京", 0.14, True),
    City("上海", "上海", 0.14, True),
    City("广东", "深圳", 0.10, True),
    City("广东", "广州", 0.08, True),
    City("浙江", "杭州", 0.09, True),
    City("江苏", "苏州", 0.06, False),
    City("江苏", "南京", 0.05, False),
    City("四川", "成都", 0.06, False),
    City("湖北", "武汉", 0.05, False),
    City("山东", "青岛", 0.04, False),
    City("山东", "济南", 0.03, False),
    City("福建", "厦门", 0.03, False),
    City("陕西", "西安", 0.04, False),
    City("重庆", "重庆", 0.04, False),
    City("天津", "天津", 0.05, False),
)
TIER_ONE_EFFECT = 0.2

TITLES = (
    Category("CEO", 0.04, 0.6),
    Category("CTO", 0.04, 0.6),
    Category("CIO", 0.02, 0.6),
    Category("VP of Operations", 0.03, 0.6),
    Category("IT总监", 0.06, 0.5),
    Category("数字化转型总监", 0.04, 0.5),
    Category("市场总监", 0.05, 0.5),
    Category("采购经理", 0.07, 0.2),
    Category("IT经理", 0.09, 0.2),
    Category("产品经理", 0.08, 0.2),
    Category("工程师", 0.20, 0.0),
    Category("数据分析师", 0.09, 0.0),
    Category("运营专员", 0.10, 0.0),
    Category("学生", 0.06, -1.2),
    Category("实习生", 0.03, -1.2),
)

FREE_EMAIL_DOMAINS = ("qq.com", "163.com", "126.com", "foxmail.com", "sina.com", "gmail.com")
FREE_EMAIL_SHARE = 0.35
FREE_EMAIL_EFFECT = -0.5

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘"
GIVEN_NAMES = (
    "伟",
    "芳",
    "娜",
    "敏",
    "静",
    "磊",
    "强",
    "洋",
    "艳",
    "杰",
    "勇",
    "军",
    "婷",
    "涛",
    "明",
)
PINYIN = ("wei", "fang", "na", "min", "jing", "lei", "qiang", "yang", "yan", "jie", "yong", "jun")
COMPANY_WORDS = ("云启", "华信", "智达", "恒通", "博远", "中科", "天成", "鼎新", "瑞丰", "海纳")
COMPANY_SUFFIXES = ("科技有限公司", "信息技术有限公司", "集团有限公司", "股份有限公司")


@dataclass(frozen=True)
class Page:
    name: str
    path: str
    weight: float
    intent_tilt: float  # how strongly intent draws a visitor to this page (log-weight per σ)


PAGES = (
    Page("Home", "/", 0.25, -0.2),
    Page("Product", "/product", 0.25, 0.1),
    Page("Pricing", "/pricing", 0.07, 0.8),
    Page("Case Studies", "/case-studies", 0.10, 0.4),
    Page("Docs", "/docs/getting-started", 0.12, 0.2),
    Page("Blog", "/blog/digital-factory", 0.16, -0.3),
    Page("About", "/about", 0.05, 0.0),
)
PRICING = next(i for i, p in enumerate(PAGES) if p.name == "Pricing")
CASE_STUDIES = next(i for i, p in enumerate(PAGES) if p.name == "Case Studies")
WHITEPAPERS = ("2025制造业数字化转型白皮书", "营销自动化ROI指南", "B2B获客渠道报告")

# Event names the simulated site and channels send (the default scoring rules match them).
FORM_SUBMITTED = "form_submitted"
WHITEPAPER_DOWNLOADED = "whitepaper_downloaded"
NEWSLETTER_SUBSCRIBED = "newsletter_subscribed"
EMAIL_OPENED = "email_opened"
EMAIL_CLICKED = "email_clicked"
EMAIL_BOUNCED = "email_bounced"
UNSUBSCRIBED = "email_unsubscribed"
OPPORTUNITY_CREATED = "opportunity_created"
DEAL_WON = "deal_won"
DEAL_LOST = "deal_lost"


@dataclass(frozen=True)
class TrueEffects:
    """The conversion model's true coefficients (log-odds), stored with every run."""

    base: float = -6.0
    intent: float = 0.6
    pricing_views_log1p: float = 0.7
    case_study_views_log1p: float = 0.25
    form_submitted: float = 1.1
    whitepaper_downloaded: float = 0.45
    email_clicks_log1p: float = 0.4
    return_visits_log1p: float = 0.3
    win_base: float = -0.8
    win_size_effect: float = 0.5
    win_title_effect: float = 0.3
    deal_revenue_sigma: float = 0.45
