"""Routing: ordered rules, first match wins, skipped reps recorded with reasons, once per
contact, and triggered by `became_mql` events on the change feed."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import insert, select

from capture.models import Event
from core import feed
from core.clock import clock
from core.db import session_scope
from handoff import service, tasks
from handoff.models import Assignment, Lead, RoutingDecision
from tests.conftest import Backend
from tests.handoff.conftest import company_of, lead, make_contact, make_rep, make_rule, route


def decisions(lead_id: uuid.UUID) -> list[RoutingDecision]:
    with session_scope() as session:
        query = select(RoutingDecision).where(RoutingDecision.lead_id == lead_id)
        return list(session.scalars(query.order_by(RoutingDecision.id)))


def standard_rules() -> None:
    make_rule("keep the owner", 10, "existing_owner")
    make_rule("territory", 20, "territory")
    make_rule("industry", 30, "industry")
    make_rule("everyone", 40, "pool", strategy="weighted")


def test_territory_then_industry_then_pool(backend: Backend, now: datetime) -> None:
    standard_rules()
    chongqing = make_rep("Chongqing rep", territories=[{"kind": "province", "name": "重庆"}])
    maker = make_rep("Manufacturing rep", industries=["manufacturing"])
    pool = make_rep("Pool rep")
    by_city = route(make_contact({"city": "重庆市"}))
    by_industry = route(make_contact(company={"industry": "Manufacturing"}))
    by_pool = route(make_contact({"city": "Harbin"}))
    assert (by_city.rep_id, by_industry.rep_id) == (chongqing, maker)
    assert by_pool.rep_id in {chongqing, maker, pool}
    decided = decisions(by_city.id)[0]
    assert (decided.rule_name, decided.rule_kind, decided.trigger) == (
        "territory",
        "territory",
        "manual",
    )
    assert by_city.status == "assigned" and by_city.accept_by == now + timedelta(minutes=15)


def test_same_company_domain_goes_to_its_owner(backend: Backend, now: datetime) -> None:
    standard_rules()
    owner = make_rep("Owner", territories=[{"kind": "country", "name": "SG"}])
    make_rep("Other", territories=[{"kind": "province", "name": "Sichuan"}])
    first = make_contact({"country": "SG"}, email="a@acme.cn", company={"name": "Acme"})
    assert route(first).rep_id == owner
    colleague = make_contact({"province": "四川"}, email="b@ACME.cn")
    same_company = make_contact({"province": "四川"}, company_id=company_of(first))
    gmail_stranger = make_contact({"province": "四川"}, email="c@gmail.com")
    assert route(colleague).rep_id == owner
    assert route(same_company).rep_id == owner
    assert route(gmail_stranger).rep_id != owner


def test_skipped_reps_are_recorded_with_reasons(backend: Backend, now: datetime) -> None:
    make_rule("territory", 10, "territory")
    make_rule("fallback", 20, "fallback")
    sichuan = [{"kind": "province", "name": "Sichuan"}]
    off = make_rep("Off", territories=sichuan, on_duty=False)
    night = make_rep("Night", territories=sichuan, work_start="20:00", work_end="23:00")
    full = make_rep("Full", territories=sichuan, capacity=1)
    route(make_contact({"province": "Sichuan", "name": "fills Full"}))
    queued = route(make_contact({"province": "Sichuan"}))
    assert (queued.status, queued.rep_id) == ("queued", None)
    decided = decisions(queued.id)[0]
    assert decided.rule_kind == "fallback"
    reasons = {item["rep_id"]: item["reason"] for item in decided.skipped}
    assert reasons == {
        str(off): "off duty",
        str(night): "outside working hours",
        str(full): "at capacity",
    }


def test_no_rule_matching_leaves_the_lead_waiting(backend: Backend, now: datetime) -> None:
    make_rule("only VIPs", 10, "pool", condition={"field": "traits.vip", "op": "eq", "value": True})
    make_rep("Anyone")
    waiting = route(make_contact({"name": "not a VIP"}))
    assert waiting.status == "waiting"
    assert decisions(waiting.id)[0].rule_name == "no rule matched: fallback queue"
    assert route(make_contact({"vip": False})).status == "waiting"
    assert route(make_contact({"vip": True})).status == "assigned"


def test_weighted_round_robin_follows_the_weights(backend: Backend, now: datetime) -> None:
    make_rule("pool", 10, "pool", strategy="weighted")
    heavy = make_rep("Heavy", weight=3, capacity=100)
    light = make_rep("Light", weight=1, capacity=100)
    owners = [route(make_contact()).rep_id for _ in range(8)]
    assert owners.count(heavy) == 6 and owners.count(light) == 2


def test_fewest_open_leads_wins(backend: Backend, now: datetime) -> None:
    make_rule("pool", 10, "pool", strategy="fewest_open")
    a = make_rep("A")
    b = make_rep("B")
    owners = [route(make_contact()).rep_id for _ in range(4)]
    assert owners.count(a) == 2 and owners.count(b) == 2


def test_a_contact_is_routed_once(backend: Backend, now: datetime) -> None:
    make_rule("pool", 10, "pool")
    make_rep("A")
    contact = make_contact()
    first = route(contact, key="mql:1")
    assert route(contact, key="mql:1").id == first.id
    assert route(contact, key="manual:other").id == first.id
    with session_scope() as session:
        assert session.scalar(select(Lead.id).where(Lead.contact_id == contact)) == first.id
        assert len(session.scalars(select(Assignment)).all()) == 1


def test_became_mql_on_the_change_feed_routes_the_contact_once(
    backend: Backend, now: datetime
) -> None:
    make_rule("pool", 10, "pool")
    rep = make_rep("A")
    contact = make_contact()
    tasks.subscribe()
    with session_scope() as session:
        event_id = session.execute(
            insert(Event)
            .values(
                source_id=uuid.uuid4(),
                message_id="m1",
                contact_id=contact,
                type="track",
                name="became_mql",
                properties={},
                context={},
                timestamp=clock.now(),
                received_at=clock.now(),
            )
            .returning(Event.id)
        ).scalar_one()
        feed.publish(
            session,
            [
                feed.Change(feed.EVENT_STORED, contact, {"event_id": 0, "name": "page"}),
                feed.Change(feed.EVENT_STORED, uuid.uuid4(), {"event_id": 1, "name": "became_mql"}),
                feed.Change(
                    feed.EVENT_STORED, contact, {"event_id": event_id, "name": "became_mql"}
                ),
            ],
        )
    with session_scope() as session:
        feed.dispatch(session)
    with session_scope() as session:
        feed.dispatch(session)
        leads = session.scalars(select(Lead)).all()
    assert [(x.rep_id, x.trigger, x.idempotency_key) for x in leads] == [
        (rep, "became_mql", f"mql:{event_id}")
    ]


def test_waiting_leads_go_to_the_first_rep_to_come_on_duty(backend: Backend, now: datetime) -> None:
    make_rule("pool", 10, "pool")
    rep = make_rep("Day shift", work_start="11:00", work_end="18:00")
    waiting = route(make_contact())
    assert waiting.status == "waiting"
    with session_scope() as session:
        assert service.route_waiting(session) == 0
    assert len(decisions(waiting.id)) == 1  # a retry that finds nobody records nothing
    clock.advance(timedelta(hours=1))  # 11:00 in Shanghai
    with session_scope() as session:
        assert service.route_waiting(session) == 1
    moved = lead(waiting.id)
    assert (moved.status, moved.rep_id) == ("assigned", rep)
    assert [d.trigger for d in decisions(waiting.id)] == ["manual", "retry"]


def test_a_batch_of_mqls_from_the_feed_is_shared_fairly(backend: Backend, now: datetime) -> None:
    make_rule("pool", 10, "pool", strategy="fewest_open")
    a, b = make_rep("A"), make_rep("B")
    contacts = [make_contact() for _ in range(4)]
    tasks.subscribe()
    with session_scope() as session:
        feed.publish(
            session,
            [
                feed.Change(feed.EVENT_STORED, c, {"event_id": 100 + n, "name": "became_mql"})
                for n, c in enumerate(contacts)
            ],
        )
    with session_scope() as session:
        feed.dispatch(session)
        owners = [lead.rep_id for lead in session.scalars(select(Lead))]
    assert sorted(map(str, owners)) == sorted(map(str, [a, a, b, b]))


def test_a_journeys_handoff_step_routes_the_contact_once(backend: Backend, now: datetime) -> None:
    from journeys import engine

    standard_rules()
    rep = make_rep("Pool rep")
    contact_id = make_contact({"city": "Harbin"})
    [hand_off] = engine._handoff  # handoff registers itself with journeys at import
    step = {
        "contact_id": contact_id,
        "journey_id": uuid.uuid4(),
        "enrollment_id": uuid.uuid4(),
        "reason": "visited pricing",
        "idempotency_key": "enrollment:node:1",
    }
    with session_scope() as session:
        first = hand_off(session, **step)
    with session_scope() as session:
        again = hand_off(session, **step)
    assert first == again
    assert (first["rep_id"], first["lead_status"]) == (str(rep), "assigned")
    assert lead(uuid.UUID(first["lead_id"])).trigger == "journey"
