"""Money as integer fen (分): parsing yuan amounts exactly and writing them back as yuan."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

FEN_PER_YUAN = 100
CURRENCIES = ("CNY",)


def parse_yuan(text: str | int | Decimal) -> int:
    """'1,234.5' → 123450 fen. Refuses what is not a non-negative amount with at most 2 decimals."""
    try:
        amount = Decimal(str(text).strip().replace(",", ""))
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a number") from None
    if not amount.is_finite():
        raise ValueError(f"{text!r} is not a number")
    if amount < 0:
        raise ValueError("an amount cannot be negative")
    fen = amount * FEN_PER_YUAN
    if fen != fen.to_integral_value():
        raise ValueError(f"{text!r} has more than 2 decimals")
    return int(fen)


def yuan(fen: int) -> str:
    """123450 → '1234.50'."""
    sign = "-" if fen < 0 else ""
    whole, part = divmod(abs(fen), FEN_PER_YUAN)
    return f"{sign}{whole}.{part:02d}"


def fen_ratio(numerator_fen: int, denominator: float) -> int | None:
    """A cost per unit, rounded half-up to the fen; None when there is nothing to divide by."""
    if denominator <= 0:
        return None
    return int((Decimal(numerator_fen) / Decimal(repr(denominator))).quantize(0, ROUND_HALF_UP))
