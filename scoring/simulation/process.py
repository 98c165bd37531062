"""The generative process of the simulated population, one person at a time.

Time runs in days from the start of the simulated period (day 0) to its end (day D).

1. Companies (one per three people) get an industry, a size band with an employee count and a
   city in a Chinese province, each drawn from the shares in `world`.
2. A person works at a uniformly drawn company, has a job title, a free (qq.com, 163.com, …) or
   company email address, and a hidden buying intent z ~ N(0, 1). Their fit is the sum of the
   true log-odds effects of industry, size band, title, free email and a tier-one city.
3. They arrive on a uniformly drawn day. The first visit comes from a channel drawn by
   `Channel.share` (Baidu paid and organic, WeChat, Douyin, Xiaohongshu, Zhihu, email, SMS,
   referral, direct), under one of its named campaigns. They make 1 + Poisson(1.3·e^{0.6z})
   visits within a window of U(3, 45) days; returning visits come from `RETURN_MIX`.
4. Each visit views 1 + Poisson(1.6·e^{0.25z}) pages; a page is drawn with weight
   w·e^{tilt·z}, so intent draws people to pricing and case studies. After the pages, a visit
   downloads a whitepaper with probability σ(−3.2 + 0.7z), submits the demo-request form with
   σ(−4.2 + 0.9z + 0.4·fit) and subscribes to the newsletter with 0.03. Each of these makes the
   person known (identify + group); until then they are anonymous.
5. Known people get the newsletter weekly from three days after identification for nine weeks:
   the first send hard-bounces with 0.02; each send is opened with σ(−0.7 + 0.5z), clicked
   (bringing a visit from the newsletter campaign) with σ(−1.3 + 0.5z) given an open, and
   unsubscribed with 0.015·e^{−0.4z} given an open. A bounce or unsubscribe ends the emails.
6. A known person becomes an opportunity with the true probability
   p = σ(base + fit + Σ effect of each channel that brought a visit + 0.6z
          + 0.7·ln(1 + pricing views) + 0.25·ln(1 + case-study views) + 1.1·[form submitted]
          + 0.45·[whitepaper] + 0.4·ln(1 + email clicks) + 0.3·ln(1 + return visits));
   an anonymous person never does (p = 0). The opportunity opens 1 + Exp(mean 6) days after
   their last activity, so every behaviour that decided it precedes it.
7. An opportunity is won with σ(−0.8 + 0.5·size effect + 0.3·title effect), 14–75 days later,
   for log-normal revenue in CNY around the size band's median deal (σ = 0.45); else lost.
8. Each paid campaign costs its daily budget × U(0.85, 1.15) CNY per day.

A channel's true incremental effect is Σ over the people it touched of p − p without its effect.
Everything is drawn from one `random.Random(seed)`, so a seed gives the same population.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from scoring.simulation import world
from scoring.simulation.world import CAMPAIGNS, CHANNELS, PAGES, TrueEffects

MINUTE = 1 / 1440
MOBILE_FIRST_CHANNELS = frozenset({"wechat", "douyin", "xiaohongshu"})


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method: exact and quick for the small means used here."""
    limit, count, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def pick(rng: random.Random, cumulative: list[float]) -> int:
    x = rng.random() * cumulative[-1]
    for index, bound in enumerate(cumulative):
        if x < bound:
            return index
    return len(cumulative) - 1


def cumulative(weights: list[float]) -> list[float]:
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    return out


@dataclass(frozen=True)
class Company:
    index: int
    name: str
    industry: int
    size_band: int
    employees: int
    city: int

    @property
    def fit_log_odds(self) -> float:
        tier_one = world.TIER_ONE_EFFECT if world.CITIES[self.city].tier_one else 0.0
        return (
            world.INDUSTRIES[self.industry].log_odds_effect
            + world.SIZE_BANDS[self.size_band].log_odds_effect
            + tier_one
        )

    def traits(self) -> dict[str, Any]:
        city = world.CITIES[self.city]
        return {
            "name": self.name,
            "industry": world.INDUSTRIES[self.industry].name,
            "employees": self.employees,
            "province": city.province,
            "city": city.city,
        }


@dataclass
class Activity:
    """One thing that happened, in days from the start; `visit` indexes the person's visits."""

    at: float
    kind: str  # page | track | identify | group
    name: str | None
    properties: dict[str, Any]
    visit: int | None = None
    page: int | None = None


@dataclass
class Visit:
    start: float
    campaign: int


@dataclass
class Person:
    index: int
    company: Company
    title: int
    free_email: bool
    intent: float
    fit_log_odds: float
    first_campaign: int
    visits: list[Visit] = field(default_factory=list)
    activities: list[Activity] = field(default_factory=list)
    identified_at: float | None = None
    mobile: bool = False
    name: str = ""
    email: str | None = None
    unsubscribed: bool = False
    bounced: bool = False
    form_submitted: bool = False
    true_probability: float = 0.0
    channels_touched: frozenset[int] = frozenset()
    log_odds: float = 0.0
    converted: bool = False
    converted_at: float | None = None
    won: bool = False
    closed_at: float | None = None
    revenue_cny: Decimal | None = None

    @property
    def first_channel(self) -> str:
        return CAMPAIGNS[self.first_campaign].channel


class Population:
    """Draws companies up front, then people one by one (so any size fits in memory)."""

    def __init__(self, days: int, seed: int, effects: TrueEffects | None = None) -> None:
        self.days = days
        self.seed = seed
        self.effects = effects or TrueEffects()
        self.rng = random.Random(seed)
        self._channel_cum = cumulative([c.share for c in CHANNELS])
        self._industry_cum = cumulative([c.share for c in world.INDUSTRIES])
        self._size_cum = cumulative([b.share for b in world.SIZE_BANDS])
        self._city_cum = cumulative([c.share for c in world.CITIES])
        self._title_cum = cumulative([t.share for t in world.TITLES])
        self._return_cum = cumulative([share for _, share in world.RETURN_MIX])

    def companies(self, count: int) -> list[Company]:
        rng = self.rng
        out = []
        for index in range(count):
            band = pick(rng, self._size_cum)
            low, high = world.SIZE_BANDS[band].low, world.SIZE_BANDS[band].high
            city = pick(rng, self._city_cum)
            name = (
                world.CITIES[city].city
                + rng.choice(world.COMPANY_WORDS)
                + rng.choice(world.COMPANY_WORDS)
                + rng.choice(world.COMPANY_SUFFIXES)
            )
            out.append(
                Company(
                    index=index,
                    name=f"{name}（{index}）",
                    industry=pick(rng, self._industry_cum),
                    size_band=band,
                    employees=rng.randint(low, min(high, 20_000)),
                    city=city,
                )
            )
        return out

    def people(self, count: int) -> Iterator[Person]:
        companies = self.companies(max(1, count // 3))
        for index in range(count):
            yield self.person(index, self.rng.choice(companies))

    def campaign_for(self, channel: str) -> int:
        options = world.CAMPAIGNS_BY_CHANNEL[channel]
        return options[pick(self.rng, cumulative([CAMPAIGNS[i].weight for i in options]))]

    def person(self, index: int, company: Company) -> Person:
        rng, fx = self.rng, self.effects
        title = pick(rng, self._title_cum)
        free_email = rng.random() < world.FREE_EMAIL_SHARE
        intent = rng.gauss(0, 1)
        fit = (
            company.fit_log_odds
            + world.TITLES[title].log_odds_effect
            + (world.FREE_EMAIL_EFFECT if free_email else 0.0)
        )
        first = self.campaign_for(CHANNELS[pick(rng, self._channel_cum)].name)
        person = Person(index, company, title, free_email, intent, fit, first)
        mobile_share = 0.7 if CAMPAIGNS[first].channel in MOBILE_FIRST_CHANNELS else 0.3
        person.mobile = rng.random() < mobile_share
        surname = rng.choice(world.SURNAMES)
        person.name = surname + rng.choice(world.GIVEN_NAMES)
        domain = (
            rng.choice(world.FREE_EMAIL_DOMAINS) if free_email else f"corp{company.index}.com.cn"
        )
        person.email = f"{rng.choice(world.PINYIN)}.{index}.{self.seed}@{domain}"

        arrival = rng.uniform(0, self.days)
        window = rng.uniform(3, 45)
        returns = poisson(rng, 1.3 * math.exp(0.6 * intent))
        starts = [arrival, *sorted(arrival + rng.uniform(0, window) for _ in range(returns))]
        page_cum = cumulative([p.weight * math.exp(p.intent_tilt * intent) for p in PAGES])
        for number, start in enumerate(starts):
            campaign = first if number == 0 else self.returning_campaign(first)
            self.browse(person, start, campaign, page_cum, in_person_visit=True)
        if person.identified_at is not None:
            self.receive_emails(person, page_cum)
        person.activities.sort(key=lambda a: a.at)
        self.decide_outcome(person, fx)
        return person

    def returning_campaign(self, first: int) -> int:
        channel = world.RETURN_MIX[pick(self.rng, self._return_cum)][0]
        return first if channel == "first" else self.campaign_for(channel)

    def browse(
        self,
        person: Person,
        start: float,
        campaign: int,
        page_cum: list[float],
        in_person_visit: bool,
    ) -> None:
        rng, intent = self.rng, person.intent
        visit = len(person.visits)
        person.visits.append(Visit(start, campaign))
        at = start
        mean_pages = 1.6 * math.exp(0.25 * intent) if in_person_visit else 1.0
        for _ in range(1 + poisson(rng, mean_pages)):
            page = pick(rng, page_cum)
            person.activities.append(
                Activity(at, "page", PAGES[page].name, {}, visit=visit, page=page)
            )
            at += rng.expovariate(1.0) * 1.5 * MINUTE
        if not in_person_visit:
            return
        if rng.random() < sigmoid(-3.2 + 0.7 * intent):
            paper = rng.choice(world.WHITEPAPERS)
            self.conversion_point(
                person, at, world.WHITEPAPER_DOWNLOADED, {"whitepaper": paper}, visit
            )
            at += MINUTE
        if rng.random() < sigmoid(-4.2 + 0.9 * intent + 0.4 * person.fit_log_odds):
            props = {"form": "demo_request", "form_name": "预约产品演示"}
            self.conversion_point(person, at, world.FORM_SUBMITTED, props, visit)
            person.form_submitted = True
            at += MINUTE
        if person.identified_at is None and rng.random() < 0.03:
            self.conversion_point(
                person, at, world.NEWSLETTER_SUBSCRIBED, {"list": "monthly"}, visit
            )

    def conversion_point(
        self, person: Person, at: float, name: str, properties: dict[str, Any], visit: int
    ) -> None:
        if person.identified_at is None:
            person.identified_at = at
            title = world.TITLES[person.title].name
            traits = {"email": person.email, "name": person.name, "title": title}
            person.activities.append(Activity(at, "identify", None, traits, visit=visit))
            person.activities.append(
                Activity(at, "group", None, person.company.traits(), visit=visit)
            )
            at += 1e-6
        person.activities.append(Activity(at, "track", name, properties, visit=visit))

    def receive_emails(self, person: Person, page_cum: list[float]) -> None:
        rng, intent = self.rng, person.intent
        assert person.identified_at is not None
        for week in range(9):
            sent = person.identified_at + 3 + 7 * week
            props = {"campaign": "monthly-newsletter", "issue": week + 1}
            if week == 0 and rng.random() < 0.02:
                bounce = {**props, "bounce_type": "hard"}
                person.activities.append(Activity(sent, "track", world.EMAIL_BOUNCED, bounce))
                person.bounced = True
                return
            if rng.random() >= sigmoid(-0.7 + 0.5 * intent):
                continue
            opened = sent + rng.expovariate(2.0)
            person.activities.append(Activity(opened, "track", world.EMAIL_OPENED, props))
            if rng.random() < sigmoid(-1.3 + 0.5 * intent):
                clicked = opened + rng.uniform(0.2, 3) * MINUTE
                person.activities.append(Activity(clicked, "track", world.EMAIL_CLICKED, props))
                self.browse(person, clicked + MINUTE, world.NEWSLETTER, page_cum, False)
            if rng.random() < 0.015 * math.exp(-0.4 * intent):
                unsub = {**props, "channel": "email"}
                person.activities.append(
                    Activity(opened + 2 * MINUTE, "track", world.UNSUBSCRIBED, unsub)
                )
                person.unsubscribed = True
                return

    def decide_outcome(self, person: Person, fx: TrueEffects) -> None:
        rng = self.rng
        pages = [a.page for a in person.activities if a.kind == "page"]
        names = {a.name for a in person.activities if a.kind == "track"}
        clicks = sum(1 for a in person.activities if a.name == world.EMAIL_CLICKED)
        in_person_visits = sum(1 for v in person.visits if v.campaign != world.NEWSLETTER) or 1
        person.channels_touched = frozenset(
            world.CHANNEL_INDEX[CAMPAIGNS[v.campaign].channel] for v in person.visits
        )
        person.log_odds = (
            fx.base
            + person.fit_log_odds
            + sum(CHANNELS[c].log_odds_effect for c in person.channels_touched)
            + fx.intent * person.intent
            + fx.pricing_views_log1p * math.log1p(pages.count(world.PRICING))
            + fx.case_study_views_log1p * math.log1p(pages.count(world.CASE_STUDIES))
            + (fx.form_submitted if world.FORM_SUBMITTED in names else 0.0)
            + (fx.whitepaper_downloaded if world.WHITEPAPER_DOWNLOADED in names else 0.0)
            + fx.email_clicks_log1p * math.log1p(clicks)
            + fx.return_visits_log1p * math.log1p(in_person_visits - 1)
        )
        known = person.identified_at is not None
        person.true_probability = sigmoid(person.log_odds) if known else 0.0
        person.converted = rng.random() < person.true_probability
        if not person.converted:
            return
        last_activity = person.activities[-1].at
        person.converted_at = last_activity + 1 + rng.expovariate(1 / 6)
        band = world.SIZE_BANDS[person.company.size_band]
        win = sigmoid(
            fx.win_base
            + fx.win_size_effect * band.log_odds_effect
            + fx.win_title_effect * world.TITLES[person.title].log_odds_effect
        )
        person.won = rng.random() < win
        person.closed_at = person.converted_at + rng.uniform(14, 75)
        person.activities.append(
            Activity(person.converted_at, "track", world.OPPORTUNITY_CREATED, {})
        )
        if person.won:
            revenue = band.median_deal_cny * math.exp(rng.gauss(0, fx.deal_revenue_sigma))
            person.revenue_cny = Decimal(round(revenue, -2)).quantize(Decimal("0.01"))
            won = {"revenue": float(person.revenue_cny), "currency": "CNY"}
            person.activities.append(Activity(person.closed_at, "track", world.DEAL_WON, won))
        else:
            lost = {"reason": rng.choice(("budget", "competitor", "no_decision"))}
            person.activities.append(Activity(person.closed_at, "track", world.DEAL_LOST, lost))

    def expected_deal_cny(self, person: Person) -> float:
        fx = self.effects
        band = world.SIZE_BANDS[person.company.size_band]
        win = sigmoid(
            fx.win_base
            + fx.win_size_effect * band.log_odds_effect
            + fx.win_title_effect * world.TITLES[person.title].log_odds_effect
        )
        return win * band.median_deal_cny * math.exp(fx.deal_revenue_sigma**2 / 2)

    def campaign_costs(self) -> list[tuple[int, int, Decimal]]:
        """(day, campaign index, cost) for every paid campaign and day."""
        rng = random.Random(self.seed ^ 0x5EED)
        return [
            (day, index, Decimal(str(round(c.daily_cost_cny * rng.uniform(0.85, 1.15), 2))))
            for day in range(self.days)
            for index, c in enumerate(CAMPAIGNS)
            if c.daily_cost_cny > 0
        ]


@dataclass
class ChannelTally:
    """Accumulates each channel's true incremental conversions and revenue over people."""

    touched: list[int] = field(default_factory=lambda: [0] * len(CHANNELS))
    conversions: list[float] = field(default_factory=lambda: [0.0] * len(CHANNELS))
    revenue: list[float] = field(default_factory=lambda: [0.0] * len(CHANNELS))

    def add(self, person: Person, expected_deal_cny: float) -> None:
        for channel in person.channels_touched:
            self.touched[channel] += 1
            if person.identified_at is None:
                continue
            without = sigmoid(person.log_odds - CHANNELS[channel].log_odds_effect)
            lift = person.true_probability - without
            self.conversions[channel] += lift
            self.revenue[channel] += lift * expected_deal_cny
