"""Territories: provincial-level divisions of China (by English or Chinese name), cities and
ISO 3166 country codes, and where a contact is according to its traits and company."""

from __future__ import annotations

from typing import Any

# Each province-level division: English name → Chinese name; both spellings are accepted.
PROVINCES = {
    "Beijing": "北京",
    "Tianjin": "天津",
    "Shanghai": "上海",
    "Chongqing": "重庆",
    "Hebei": "河北",
    "Shanxi": "山西",
    "Liaoning": "辽宁",
    "Jilin": "吉林",
    "Heilongjiang": "黑龙江",
    "Jiangsu": "江苏",
    "Zhejiang": "浙江",
    "Anhui": "安徽",
    "Fujian": "福建",
    "Jiangxi": "江西",
    "Shandong": "山东",
    "Henan": "河南",
    "Hubei": "湖北",
    "Hunan": "湖南",
    "Guangdong": "广东",
    "Hainan": "海南",
    "Sichuan": "四川",
    "Guizhou": "贵州",
    "Yunnan": "云南",
    "Shaanxi": "陕西",
    "Gansu": "甘肃",
    "Qinghai": "青海",
    "Taiwan": "台湾",
    "Inner Mongolia": "内蒙古",
    "Guangxi": "广西",
    "Tibet": "西藏",
    "Ningxia": "宁夏",
    "Xinjiang": "新疆",
    "Hong Kong": "香港",
    "Macau": "澳门",
}
_CANONICAL = {name.lower(): name for name in PROVINCES} | {
    chinese: name for name, chinese in PROVINCES.items()
}
SUFFIXES = ("省", "市", "自治区", "特别行政区", "壮族自治区", "回族自治区", "维吾尔自治区")


def canonical_province(value: str) -> str | None:
    text = value.strip()
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if text.endswith(suffix) and len(text) > len(suffix):
            text = text.removesuffix(suffix)
            break
    return _CANONICAL.get(text) or _CANONICAL.get(text.lower())


def check_territory(kind: str, name: str) -> str:
    """The territory name in its stored form; raises ValueError naming the problem."""
    if kind == "province":
        province = canonical_province(name)
        if province is None:
            raise ValueError(f"{name!r} is not a province-level division of China")
        return province
    if kind == "country":
        code = name.strip().upper()
        if len(code) != 2 or not code.isascii() or not code.isalpha():
            raise ValueError("a country is its two-letter ISO 3166 code, e.g. CN or SG")
        return code
    city = name.strip().removesuffix("市")
    if not city:
        raise ValueError("a city needs a name")
    return city.lower()


def contact_location(traits: dict[str, Any], company_traits: dict[str, Any]) -> set[str]:
    """The territory keys (kind:name) a contact is in, from its own traits, then its company's."""
    keys: set[str] = set()
    for source in (traits, company_traits):
        for field in ("province", "state", "region"):
            value = source.get(field)
            if isinstance(value, str) and (province := canonical_province(value)):
                keys.add(f"province:{province}")
        city = source.get("city")
        if isinstance(city, str) and city.strip():
            keys.add(f"city:{city.strip().removesuffix('市').lower()}")
            if province := canonical_province(city):
                keys.add(f"province:{province}")
        country = source.get("country")
        if isinstance(country, str) and len(country.strip()) == 2:
            keys.add(f"country:{country.strip().upper()}")
    return keys
