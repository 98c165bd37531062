import pytest
from hypothesis import given
from hypothesis import strategies as st

from capture.identity import (
    clean_json,
    clean_json_each,
    normalize_email,
    normalize_phone,
    strip_control_characters,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ada@example.com", "ada@example.com"),
        ("  Ada.Lovelace@Example.COM \n", "ada.lovelace@example.com"),
        ("ZHANG.Wei+crm@QQ.com", "zhang.wei+crm@qq.com"),
        ("a@b.co", "a@b.co"),
        ("user_name-1@mail.163.com", "user_name-1@mail.163.com"),
        ("张伟@例子.中国", "张伟@例子.中国"),
        ("a@xn--fsqu00a.xn--fiqs8s", "a@例子.中国"),
        ("a" * 64 + "@example.com", "a" * 64 + "@example.com"),
    ],
)
def test_valid_emails_are_normalized(value, expected):
    assert normalize_email(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        42,
        ["a@example.com"],
        "",
        "   ",
        "plainaddress",
        "@example.com",
        "ada@",
        "ada@@example.com",
        "ada@bob@example.com",
        "ada lovelace@example.com",
        "ada@exa mple.com",
        "ada@localhost",
        "ada@example",
        "ada..lovelace@example.com",
        ".ada@example.com",
        "ada.@example.com",
        "ada@-example.com",
        "ada@example-.com",
        "ada@exa_mple.com",
        '"ada lovelace"@example.com',
        "ada@[192.0.2.1]",
        "ada\x00@example.com",
        "a" * 65 + "@example.com",
        "a@" + "b" * 250 + ".com",
        "a" * 5000 + "@example.com",
    ],
)
def test_invalid_emails_are_rejected(value):
    assert normalize_email(value) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("13800138000", "+8613800138000"),
        ("138-0013-8000", "+8613800138000"),
        ("138 0013 8000", "+8613800138000"),
        ("(138) 0013-8000", "+8613800138000"),
        ("+86 138 0013 8000", "+8613800138000"),
        ("+86-138-0013-8000", "+8613800138000"),
        ("008613800138000", "+8613800138000"),
        ("0086 138 0013 8000", "+8613800138000"),
        ("8613800138000", "+8613800138000"),
        ("86 138 0013 8000", "+8613800138000"),
        ("１３８００１３８０００", "+8613800138000"),
        (" 13800138000 ", "+8613800138000"),
        (13800138000, "+8613800138000"),
        ("19912345678", "+8619912345678"),
        ("010-12345678", "+861012345678"),
        ("+1 650-253-0000", "+16502530000"),
        ("+44 20 7946 0958", "+442079460958"),
        ("+86 138 0013 8000 ext. 12", "+8613800138000"),
    ],
)
def test_valid_phones_become_e164(value, expected):
    assert normalize_phone(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        1.5,
        "",
        "   ",
        "abc",
        "12345",
        "1380013800",
        "138001380001",
        "11111111111",
        "+86 000 0000 0000",
        "+999 1234 5678",
        "1" * 100,
    ],
)
def test_invalid_phones_are_rejected(value):
    assert normalize_phone(value) is None


def test_phone_default_region_reads_national_numbers():
    assert normalize_phone("(650) 253-0000", default_region="US") == "+16502530000"
    assert normalize_phone("(650) 253-0000") is None
    assert normalize_phone("+8613800138000", default_region="US") == "+8613800138000"


def test_phone_with_unknown_default_region_needs_a_country_code():
    assert normalize_phone("13800138000", default_region="ZZ") is None
    assert normalize_phone("+8613800138000", default_region="ZZ") == "+8613800138000"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "plain"),
        ("tab\tnew\nline\r", "tab\tnew\nline\r"),
        ("nul\x00byte", "nulbyte"),
        ("bell\x07esc\x1b[0m", "bellesc[0m"),
        ("del\x7f", "del"),
        ("c1\x85\x9fend", "c1end"),
        ("lone\ud800surrogate", "lonesurrogate"),
        ("中文 😀 ok", "中文 😀 ok"),
        ("\u200bzero-width", "\u200bzero-width"),
    ],
)
def test_strip_control_characters(value, expected):
    assert strip_control_characters(value) == expected


def test_clean_json_strips_strings_and_keys_at_every_level():
    value = {"na\x00me": "A\x00da", "list": ["x\x01", {"k\x02": "v\x03"}], "n": 1, "ok": True}
    assert clean_json(value) == {
        "name": "Ada",
        "list": ["x", {"k": "v"}],
        "n": 1,
        "ok": True,
    }


def test_clean_json_leaves_clean_data_untouched_and_copies_what_it_changes():
    clean = {"a": {"b": ["c"]}, "n": 1.5, "t": "tab\tand\nnewline", "zh": "制造业"}
    assert clean_json(clean) is clean
    dirty = {"a": {"b": ["c\u0000"]}}
    cleaned = clean_json(dirty)
    assert cleaned == {"a": {"b": ["c"]}}
    assert dirty == {"a": {"b": ["c\u0000"]}}


@pytest.mark.parametrize(
    "dirty",
    [
        {"x": "bell\u0007"},
        {"x": "back\u0008space"},
        {"x": "form\u000cfeed"},
        {"x": "del\u007f"},
        {"x": "c1\u0085"},
        {"x": "lone\ud800"},
        {"k\u0001": "key"},
        [[[[[[[[[[[[[[[[[[[[["deep"]]]]]]]]]]]]]]]]]]]]],
    ],
)
def test_clean_json_fast_path_never_lets_a_dirty_value_through(dirty):
    assert clean_json(dirty) is not dirty


# Controls, what their escapes are made of and printable neighbours, or any character at all.
EDGE_CHARACTERS = "\x00\x07\x08\x0c\x1f\x7f\x80\x85\x9f\xa0»\\bfu0\t\n中"


@given(
    st.text(st.sampled_from(EDGE_CHARACTERS), max_size=8)
    | st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)
)
def test_clean_json_fast_path_keeps_exactly_the_strings_without_control_characters(text):
    value = {"x": text, "y": [text]}
    cleaned = clean_json(value)
    stripped = strip_control_characters(text)
    assert cleaned == {"x": stripped, "y": [stripped]}
    if stripped == text and "\\" not in text:
        # Only a backslash before b, f or u00 can send a clean value the slow way.
        assert cleaned is value


DIRTY_ONES = [
    {"x": "bell\u0007"},
    {"k\u0001": "key"},
    [[[[[[[[[[[[[[[[[[[[["deep"]]]]]]]]]]]]]]]]]]]]],
    {"long": "x" * 20_000},
]


@pytest.mark.parametrize("dirty", DIRTY_ONES)
def test_clean_json_each_cleans_each_value_as_clean_json_does(dirty):
    clean = {"page": {"url": "https://www.example.cn/", "title": "制造业"}}
    cleaned = clean_json_each([clean, dirty, {}])
    assert cleaned == [clean, clean_json(dirty), {}]
    assert cleaned[0] is clean and cleaned[1] is not dirty


def test_clean_json_each_hands_clean_values_back_as_they_are():
    values = [{"a": {"b": ["c"]}}, {"t": "tab\tok"}, {}]
    cleaned = clean_json_each(values)
    assert all(after is before for after, before in zip(cleaned, values, strict=True))


def test_clean_json_truncates_long_strings_and_keys():
    cleaned = clean_json({"k" * 20: "v" * 20, "short": "ok"}, max_string=5)
    assert cleaned == {"kkkkk": "vvvvv", "short": "ok"}


def test_clean_json_default_string_limit():
    cleaned = clean_json({"text": "x" * 20_000})
    assert cleaned == {"text": "x" * 10_000}


def test_clean_json_cuts_nesting_deeper_than_max_depth():
    assert clean_json({"a": {"b": {"c": 1}}}, max_depth=2) == {"a": {"b": None}}
    assert clean_json([[[1]]], max_depth=2) == [[None]]
    assert clean_json({"a": {"b": {"c": 1}}}, max_depth=3) == {"a": {"b": {"c": 1}}}


def test_clean_json_survives_pathological_nesting():
    deep: object = "leaf"
    for _ in range(10_000):
        deep = [deep]
    cleaned = clean_json(deep)
    depth = 0
    while isinstance(cleaned, list):
        cleaned = cleaned[0]
        depth += 1
    assert (depth, cleaned) == (20, None)


@pytest.mark.parametrize("value", [None, 0, -1.5, True, False, "s", [], {}])
def test_clean_json_keeps_scalars_and_empty_containers(value):
    assert clean_json(value) == value
