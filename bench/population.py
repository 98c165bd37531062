"""The benchmark population shared by the scoring and journeys benches: known contacts with
fit traits and a realistic event table, written by set-based SQL on PostgreSQL.

Per contact: one to five page views (the count is stored in `page_views`), a pricing-page
view among them for about one in three, a form submission for one in five, an email click
for one in four and a whitepaper download for one in twenty, each event at its own random
moment in the last `days` days.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import text

from core.db import get_engine, session_scope

TITLES = ("CTO", "工程师", "IT经理", "学生")
PATHS = ("/", "/product", "/blog/ai-crm", "/docs/start", "/customers")
FORMS = ("demo", "trial", "newsletter")
CAMPAIGNS = ("spring_launch", "webinar_0415", "nurture_week2")

CONTACTS_SQL = """
INSERT INTO contacts (id, is_known, email, traits, tags, event_counts, page_views,
    email_consent, sms_consent, email_unsubscribed, sms_unsubscribed, suppressed,
    first_seen_at, last_seen_at, created_at, updated_at)
SELECT id, true, 'c' || n || '@corp' || n % 97 || '.cn',
    jsonb_build_object(
        'job_title', (CAST(:titles AS text[]))[1 + n % 4],
        'title', (CAST(:titles AS text[]))[1 + n % 4],
        'industry', (ARRAY['制造业','软件和信息技术','金融','教育'])[1 + n % 7 % 4],
        'company_size', (ARRAY[20, 120, 500, 3000])[1 + n % 5 % 4]),
    '[]', '{}', 1 + abs(hashtext(id::text)::bigint) % 5,
    CASE WHEN n % 3 = 0 THEN 'granted' ELSE 'unknown' END, 'unknown',
    false, false, false, :now - make_interval(days => :days), :now, :now, :now
FROM (SELECT gen_random_uuid() AS id, n FROM generate_series(1, :count) AS n) AS numbered
"""

# random() sits in each row's own select list, so every event gets its own moment.
PAGE_EVENTS_SQL = """
INSERT INTO events (source_id, message_id, contact_id, type, name, properties, context,
    timestamp, received_at, url, path, channel)
SELECT :source, 'page-' || n, id, 'page', NULL, '{}', '{}', at, at,
    'https://www.example.cn' || path, path, 'organic_search'
FROM (
    SELECT c.id, row_number() OVER () AS n, :now - random() * make_interval(days => :days) AS at,
        CASE
            WHEN k = 1 AND abs(hashtext(c.id::text || 'pricing')::bigint) % 100 < 34
            THEN '/pricing'
            ELSE (CAST(:paths AS text[]))[1 + abs(hashtext(c.id::text || k)::bigint) % 5]
        END AS path
    FROM contacts c CROSS JOIN LATERAL generate_series(1, c.page_views) AS k
) AS pages
"""

TRACK_EVENTS_SQL = """
INSERT INTO events (source_id, message_id, contact_id, type, name, properties, context,
    timestamp, received_at)
SELECT :source, 'track-' || n, id, 'track', name, properties, '{}', at, at
FROM (
    SELECT c.id, kind.name, row_number() OVER () AS n,
        :now - random() * make_interval(days => :days) AS at,
        CASE kind.name
            WHEN 'form_submitted' THEN jsonb_build_object('form_id',
                (CAST(:forms AS text[]))[1 + abs(hashtext(c.id::text || 'form')::bigint) % 3])
            WHEN 'email_clicked' THEN jsonb_build_object('campaign',
                (CAST(:campaigns AS text[]))[1 + abs(hashtext(c.id::text || 'mail')::bigint) % 3])
            ELSE '{}'::jsonb END AS properties
    FROM contacts c CROSS JOIN (VALUES ('form_submitted', 20), ('email_clicked', 25),
        ('whitepaper_downloaded', 5)) AS kind (name, percent)
    WHERE abs(hashtext(c.id::text || kind.name)::bigint) % 100 < kind.percent
) AS tracked
"""


# The events indexes that back no constraint: dropped for the load and built again after,
# since one sorted build is far cheaper than millions of inserts at random places.
PLAIN_EVENT_INDEXES_SQL = """
SELECT indexname, indexdef FROM pg_indexes
WHERE schemaname = current_schema() AND tablename = 'events' AND indexname NOT IN
    (SELECT conname FROM pg_constraint WHERE conrelid = 'events'::regclass)
"""


def load_population(count: int, now: datetime, days: int = 60) -> int:
    """Writes `count` contacts and their events; returns the number of events."""
    values = {
        "count": count,
        "now": now,
        "days": days,
        "source": "00000000-0000-0000-0000-000000000001",
        "titles": list(TITLES),
        "paths": list(PATHS),
        "forms": list(FORMS),
        "campaigns": list(CAMPAIGNS),
    }
    with session_scope() as session:
        session.execute(text(CONTACTS_SQL), values)
        indexes = session.execute(text(PLAIN_EVENT_INDEXES_SQL)).all()
        for name, _ in indexes:
            session.execute(text(f'DROP INDEX "{name}"'))
        session.execute(text(PAGE_EVENTS_SQL), values)
        session.execute(text(TRACK_EVENTS_SQL), values)
        session.execute(text("SET LOCAL maintenance_work_mem = '256MB'"))
        for _, definition in indexes:
            session.execute(text(definition))
        stored = int(session.scalar(text("SELECT count(*) FROM events")) or 0)
    # As autovacuum would have by now: statistics, and a visibility map for index-only scans.
    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM (ANALYZE) contacts, events"))
    return stored
