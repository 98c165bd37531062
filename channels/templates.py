"""Rendering marketer-authored templates safely: a Jinja2 sandbox that refuses Python internals,
HTML autoescaping, defaults for missing values, and email link/pixel rewriting."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from jinja2 import ChainableUndefined, Template, TemplateError, nodes
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from markupsafe import Markup

MAX_REPEAT_LENGTH = 10_000
MAX_EXPONENT = 100
# String methods that pad to a caller-chosen width: one call could allocate gigabytes.
PADDING_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})


class TemplateProblem(Exception):
    """A template that does not compile or render; `field` names the part at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class StrictSandbox(ImmutableSandboxedEnvironment):
    """The sandbox, stricter: an unsafe attribute fails at once instead of rendering empty,
    and `*`, `**` and padding cannot build huge strings or numbers (a cheap denial of service)."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        for padding_filter in ("center", "indent"):
            self.filters.pop(padding_filter, None)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str) and attr in PADDING_METHODS:
            return False
        return super().is_safe_attribute(obj, attr, value)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise SecurityError(f"access to attribute {attribute!r} is not allowed in templates")

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
            raise SecurityError("exponent too large")
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(count, int)
                    and len(seq) * count > MAX_REPEAT_LENGTH
                ):
                    raise SecurityError("repetition too large")
        return super().call_binop(context, operator, left, right)


_html_env = StrictSandbox(autoescape=True, undefined=ChainableUndefined)
_text_env = StrictSandbox(autoescape=False, undefined=ChainableUndefined)


def check_source(source: str, field: str) -> None:
    """Refuses a template that does not compile or that names a private attribute anywhere,
    even in a branch that sample data would not reach."""
    try:
        ast = _text_env.parse(source)
    except TemplateError as exc:
        raise TemplateProblem(field, f"invalid template: {exc}") from exc
    for node in ast.find_all((nodes.Getattr, nodes.Const)):
        name: object
        if isinstance(node, nodes.Getattr):
            name = node.attr
            private = node.attr.startswith("_")
        else:
            # Dunder names also hide in strings: item lookups, |attr(), "{0.__class__}".format.
            name = getattr(node, "value", None)
            private = isinstance(name, str) and "__" in name
        if private:
            raise TemplateProblem(field, f"not allowed: '{name}' reaches a private attribute")


@lru_cache(maxsize=1024)
def _compiled(source: str, html_escape: bool) -> Template:
    # Compiling costs far more than rendering, and the same few templates render all day.
    return (_html_env if html_escape else _text_env).from_string(source)


def render(source: str, variables: Mapping[str, Any], *, html_escape: bool, field: str) -> str:
    try:
        return _compiled(source, html_escape).render(variables)
    except SecurityError as exc:
        raise TemplateProblem(field, f"not allowed: {exc}") from exc
    except TemplateError as exc:
        raise TemplateProblem(field, f"could not render: {exc}") from exc
    except (ArithmeticError, ValueError, TypeError) as exc:
        raise TemplateProblem(field, f"could not render: {exc}") from exc


def variables_for(contact: Mapping[str, Any], context: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a template sees: `contact` (fields and traits), `traits`, and the send context
    (e.g. `event`, `journey`), each a plain dict so nothing reaches an ORM object."""
    traits = dict(contact.get("traits") or {})
    variables: dict[str, Any] = dict(context or {})
    variables["contact"] = {**traits, **{k: v for k, v in contact.items() if k != "traits"}}
    variables["traits"] = traits
    return variables


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    html: str
    text: str


def render_email(
    subject: str,
    html_source: str,
    text_source: str | None,
    layout_html: str | None,
    layout_text: str | None,
    variables: Mapping[str, Any],
) -> RenderedEmail:
    rendered_subject = " ".join(
        render(subject, variables, html_escape=False, field="subject").split()
    )
    body_html = render(html_source, variables, html_escape=True, field="html")
    if layout_html:
        body_html = render(
            layout_html,
            # The body was rendered with autoescaping just above, so it is already safe HTML.
            {**variables, "content": Markup(body_html)},  # noqa: S704
            html_escape=True,
            field="layout.html",
        )
    if text_source:
        body_text = render(text_source, variables, html_escape=False, field="text")
    else:
        body_text = html_to_text(body_html)
    if layout_text:
        body_text = render(
            layout_text, {**variables, "content": body_text}, html_escape=False, field="layout.text"
        )
    return RenderedEmail(rendered_subject, body_html, body_text)


_TAG = re.compile(r"<[^>]+>")
_BLANK_LINES = re.compile(r"\n\s*\n+")


def html_to_text(markup: str) -> str:
    """A plain-text part for emails authored only in HTML."""
    without_blocks = re.sub(r"(?is)<(script|style)\b.*?</\1>", "", markup)
    with_breaks = re.sub(r"(?i)<br\s*/?>|</p>|</div>|</h\d>|</li>", "\n", without_blocks)
    text = html.unescape(_TAG.sub("", with_breaks))
    return _BLANK_LINES.sub("\n\n", text).strip()


# The HTML is our own rendered output, so a targeted pattern over <a href> is reliable enough
# and keeps every other byte of the marketer's markup untouched (a parser would re-serialise it).
_ANCHOR_HREF = re.compile(
    r"""(<a\b[^>]*?\bhref\s*=\s*)(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE | re.DOTALL
)


def add_utm(url: str, utm: Mapping[str, str]) -> str:
    """Adds UTM parameters the link does not already carry."""
    return _with_utm(url, tuple(utm.items()))


# Every email of a campaign tags the same few links the same way.
@lru_cache(maxsize=4096)
def _with_utm(url: str, utm: tuple[tuple[str, str], ...]) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    present = {key for key, _ in query}
    query += [(key, value) for key, value in utm if value and key not in present]
    return urlunsplit(parts._replace(query=urlencode(query)))


def rewrite_links(
    markup: str, tracked_url: Callable[[int, str], str], skip: Callable[[str], bool]
) -> tuple[str, list[str]]:
    """Replaces each http(s) link with `tracked_url(position, original)`; returns the new
    markup and the original URLs in position order."""
    originals: list[str] = []

    def replace(match: re.Match[str]) -> str:
        raw = match.group(2) if match.group(2) is not None else match.group(3)
        url = html.unescape(raw).strip()
        if urlsplit(url).scheme.lower() not in ("http", "https") or skip(url):
            return match.group(0)
        position = len(originals)
        originals.append(url)
        return f'{match.group(1)}"{html.escape(tracked_url(position, url), quote=True)}"'

    return _ANCHOR_HREF.sub(replace, markup), originals


def add_open_pixel(markup: str, pixel_url: str) -> str:
    pixel = (
        f'<img src="{html.escape(pixel_url, quote=True)}" width="1" height="1" alt="" '
        'style="display:none;border:0;width:1px;height:1px">'
    )
    closing = markup.lower().rfind("</body>")
    if closing == -1:
        return markup + pixel
    return markup[:closing] + pixel + markup[closing:]
