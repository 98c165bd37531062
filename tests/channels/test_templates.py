"""Templates render in a sandbox: autoescaped HTML, defaults for missing values, and no way to
reach Python internals with the known server-side template injection payloads."""

from __future__ import annotations

import pytest

from channels.templates import (
    TemplateProblem,
    add_open_pixel,
    add_utm,
    check_source,
    render,
    render_email,
    rewrite_links,
    variables_for,
)

SSTI_PAYLOADS = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__.__base__.__subclasses__()[40]('/etc/passwd').read() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__.os.popen('id').read() }}",
    "{{ namespace.__init__.__globals__.os.popen('id').read() }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os }}",
    "{{ ''|attr('__class__')|attr('__mro__') }}",
    "{{ contact|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "{{ '{0.__class__.__mro__}'.format('') }}",
    "{{ 'abc'.format_map({}) }}{{ '{0.__class__}'.format(contact) }}",
    "{% for c in ().__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ request.application.__globals__.__builtins__.__import__('os').popen('id').read() }}",
    "{{ config.__class__.__init__.__globals__['os'].popen('id').read() }}",
    "{{ contact.traits.update({'x': 1}) }}",
    "{{ 'a' * 100000000 }}",
    "{{ 9 ** 99999999 }}",
    "{{ range(999999999)|list }}",
    "{{ 'x'.ljust(1000000000) }}",
]


@pytest.mark.parametrize("payload", SSTI_PAYLOADS)
def test_injection_payload_is_refused_or_harmless(payload: str) -> None:
    variables = variables_for({"id": "c1", "traits": {"first_name": "Wei"}}, {})
    try:
        output = render(payload, variables, html_escape=True, field="html")
    except TemplateProblem as problem:
        assert problem.field == "html"
        return
    # Whatever rendered must not expose Python objects or run anything.
    for leak in ("<class", "uid=", "root:", "function", "module", "built-in"):
        assert leak not in output


@pytest.mark.parametrize("payload", [p for p in SSTI_PAYLOADS if "__" in p or "_Template" in p])
def test_private_attributes_are_refused_when_the_template_is_saved(payload: str) -> None:
    with pytest.raises(TemplateProblem, match="not allowed"):
        check_source(payload, "html")


def test_private_attribute_in_an_untaken_branch_is_still_refused() -> None:
    with pytest.raises(TemplateProblem):
        check_source("{% if contact.vip %}{{ contact.__class__ }}{% endif %}", "html")


def test_html_is_autoescaped_but_text_parts_are_not() -> None:
    variables = variables_for({"traits": {"first_name": "<script>alert(1)</script>"}}, {})
    html = render("Hi {{ contact.first_name }}", variables, html_escape=True, field="html")
    assert html == "Hi &lt;script&gt;alert(1)&lt;/script&gt;"
    text = render("Hi {{ contact.first_name }}", variables, html_escape=False, field="text")
    assert text == "Hi <script>alert(1)</script>"


def test_missing_values_take_defaults_and_nested_lookups_do_not_fail() -> None:
    variables = variables_for({"traits": {}}, {"event": {"properties": {"plan": "pro"}}})
    source = (
        "Hi {{ contact.first_name | default('there') }}, "
        "{{ contact.company.name | default('your team') }} on {{ event.properties.plan }}"
        "{{ journey.name }}"
    )
    assert render(source, variables, html_escape=True, field="html") == (
        "Hi there, your team on pro"
    )


def test_syntax_errors_name_the_field() -> None:
    with pytest.raises(TemplateProblem) as caught:
        check_source("Hello {{ contact.name ", "subject")
    assert caught.value.field == "subject"


def test_email_renders_inside_its_layout_with_a_text_part() -> None:
    variables = variables_for({"traits": {"first_name": "Wei"}}, {})
    email = render_email(
        "Welcome,\n{{ contact.first_name }}",
        "<p>Hello <b>{{ contact.first_name }}</b></p>",
        None,
        "<html><body><div class='frame'>{{ content }}</div></body></html>",
        None,
        variables,
    )
    assert email.subject == "Welcome, Wei"
    assert "<div class='frame'><p>Hello <b>Wei</b></p></div>" in email.html
    assert email.text == "Hello Wei"


def test_links_are_rewritten_in_order_and_others_left_alone() -> None:
    markup = (
        '<a href="https://acme.example/pricing?a=1&amp;b=2">Pricing</a>'
        "<a href='mailto:sales@acme.example'>Mail</a>"
        '<a class="x" href="https://acme.example/u/keep">Unsub</a>'
        '<a href="http://acme.example/docs">Docs</a>'
    )
    rewritten, originals = rewrite_links(
        markup,
        lambda position, _url: f"https://t.example/c/{position}?x=1&y=2",
        skip=lambda url: "/u/" in url,
    )
    assert originals == ["https://acme.example/pricing?a=1&b=2", "http://acme.example/docs"]
    assert 'href="https://t.example/c/0?x=1&amp;y=2"' in rewritten
    assert 'href="https://t.example/c/1?x=1&amp;y=2"' in rewritten
    assert "mailto:sales@acme.example" in rewritten
    assert "https://acme.example/u/keep" in rewritten


def test_utm_tags_are_added_without_overriding_the_link_own() -> None:
    url = add_utm(
        "https://acme.example/p?utm_source=partner&id=3",
        {"utm_source": "nurture", "utm_medium": "email", "utm_campaign": "spring"},
    )
    assert url == (
        "https://acme.example/p?utm_source=partner&id=3&utm_medium=email&utm_campaign=spring"
    )


def test_open_pixel_goes_before_the_closing_body() -> None:
    marked = add_open_pixel("<html><body><p>x</p></body></html>", "https://t.example/o.gif")
    assert marked.endswith('style="display:none;border:0;width:1px;height:1px"></body></html>')
