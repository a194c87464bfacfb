"""The SDK natively: columns in and out exactly as the host packs them,
decimals as text, settings."""

from decimal import Decimal

import pytest

from os_credits_pricing import (
    HOUR_NS,
    Config,
    Example,
    Metric,
    Policy,
    PricingError,
    check_examples,
    decimal_text,
    parse_config,
    parse_decimal,
    step,
)
from os_credits_pricing._glue import bill_columns, pack, unpack


def columns(steps):
    """Packs (metric, project, site, previous, current, t0, t1, tags) as the
    host does: strings back to back with their byte ends."""
    text, ends, timestamps, tag_counts = "", [], [], []
    for metric, project, site, previous, current, t0, t1, tags in steps:
        strings = [metric, project, site, previous, current]
        for key, value in sorted(tags.items()):
            strings += [key, value]
        for s in strings:
            text += s
            ends.append(len(text.encode()))
        timestamps += [t0, t1]
        tag_counts.append(len(tags))
    return text, ends, timestamps, tag_counts


class PerUnit(Policy):
    name = "per-unit"
    version = "1.0.0"
    metrics = (Metric("m", "m", "units", "A metric."),)
    tags = ("flavor",)

    def bill(self, usage):
        if usage.current.value == "13":
            raise PricingError("unlucky")
        if usage.current.value == "666":
            raise RuntimeError("a bug")
        if usage.current.value == "-1":
            return Decimal(-1)
        price = Decimal("2") if usage.tags.get("flavor") == "big" else Decimal("0.5")
        return usage.delta() * price


def test_unpack_gives_every_step_with_its_tags_and_times():
    text, ends, timestamps, counts = columns(
        [
            ("m", "projekt-ä", "8676", "1", "3", 10, 20, {"flavor": "big", "zone": "ö"}),
            ("m", "p2", "8677", "0.5", "1e1", 30, 40, {}),
        ]
    )
    first, second = unpack(text, ends, timestamps, counts)
    assert first.project == "projekt-ä"
    assert first.tags == {"flavor": "big", "zone": "ö"}
    assert (first.previous.timestamp_ns, first.current.timestamp_ns) == (10, 20)
    assert second.location_id == "8677" and second.tags == {}
    assert second.delta() == Decimal("9.5")


def test_steps_without_tags_unpack_as_steps_with_tags_do():
    steps = [("m", f"p{i}", "1", str(i), str(2 * i + 1), i, i + 5, {}) for i in range(4)]
    fast = unpack(*columns(steps))
    text, ends, timestamps, counts = columns(steps + [("m", "q", "2", "0", "1", 0, 1, {"flavor": "big"})])
    general = unpack(text, ends, timestamps, counts)[:4]
    assert fast == general
    assert [u.project for u in fast] == ["p0", "p1", "p2", "p3"]
    assert [(u.previous.timestamp_ns, u.current.timestamp_ns) for u in fast] == [(i, i + 5) for i in range(4)]
    assert [u.delta() for u in fast] == [Decimal(i + 1) for i in range(4)]
    # Columns as tuples (what a caller may pass) unpack the same.
    assert unpack(text, tuple(ends), tuple(timestamps), tuple(counts))[:4] == fast


def test_a_batch_gives_one_charge_or_failure_per_step():
    steps = [
        ("m", "p", "1", "0", "4", 0, HOUR_NS, {"flavor": "big"}),
        ("m", "p", "1", "0", "13", 0, HOUR_NS, {}),
        ("m", "p", "1", "0", "666", 0, HOUR_NS, {}),
        ("m", "p", "1", "0", "-1", 0, HOUR_NS, {}),
        ("m", "p", "1", "0", "3", 0, HOUR_NS, {}),
    ]
    text, ends, failed = bill_columns(PerUnit({}).bill, *columns(steps))
    data = text.encode()
    texts = [data[a:b].decode() for a, b in zip([0] + ends[:-1], ends)]
    assert texts[0] == "8" and texts[4] == "1.5"
    assert failed == [1, 2, 3]
    assert texts[1] == "unlucky"
    assert "RuntimeError: a bug" == texts[2]
    assert "negative" in texts[3]


def test_a_malformed_batch_fails_every_step_with_the_reason():
    text, ends, timestamps, counts = columns([("m", "p", "1", "0", "1", 0, 1, {})] * 2)
    _, ends_out, failed = bill_columns(PerUnit({}).bill, text, ends[:-1], timestamps, counts)
    assert failed == [0, 1] and len(ends_out) == 2
    out, _, _ = bill_columns(PerUnit({}).bill, text, ends, timestamps[:-1], counts)
    assert out.startswith("malformed batch")
    bad = list(ends)
    bad[2] = 10_000
    _, _, failed = bill_columns(PerUnit({}).bill, text, bad, timestamps, counts)
    assert failed == [0, 1]
    backwards = list(ends)
    backwards[1], backwards[2] = backwards[2], backwards[1]
    out, _, failed = bill_columns(PerUnit({}).bill, text, backwards, timestamps, counts)
    assert failed == [0, 1] and "out of order" in out


def test_charges_pack_with_byte_offsets():
    text, ends, failed = pack([("1.5", False), ("prix inconnu: é", True), ("0", False)])
    assert ends == [3, 3 + len("prix inconnu: é".encode()), 3 + len("prix inconnu: é".encode()) + 1]
    assert failed == [1]
    assert text.encode()[ends[1] : ends[2]] == b"0"


def test_decimal_text_is_plain_and_fits_the_host():
    assert decimal_text(Decimal("1E+3")) == "1000"
    assert decimal_text(Decimal("0E-9")) == "0"
    assert decimal_text(Decimal("2.50")) == "2.50"
    assert decimal_text(Decimal("-0")) == "0"
    assert decimal_text(Decimal("0.000")) == "0"
    assert decimal_text(Decimal("9" * 28)) == "9" * 28
    assert decimal_text(Decimal("9" * 29)) == "1" + "0" * 29
    assert decimal_text(Decimal("0." + "0" * 25 + "12")) == "0." + "0" * 25 + "12"
    assert decimal_text(Decimal("0." + "0" * 27 + "15")) == "0." + "0" * 27 + "2"
    assert decimal_text(Decimal(1) / Decimal(3)) == "0." + "3" * 28
    assert decimal_text(Decimal("12345678901234567890.123456789012345")) == "12345678901234567890.12345679"
    with pytest.raises(PricingError):
        decimal_text(1.5)
    with pytest.raises(PricingError):
        decimal_text(Decimal("NaN"))


def test_decimals_parse_exactly_and_refuse_nan():
    assert parse_decimal("10749.617071944445") == Decimal("10749.617071944445")
    assert parse_decimal("1e3") == 1000 and parse_decimal("1_000") == 1000
    for bad in ["NaN", "inf", "", "1,5", "zwei"]:
        with pytest.raises(PricingError):
            parse_decimal(bad)


def test_arithmetic_is_exact_beyond_28_digits():
    # Under the default context of Python this rounds to 28 digits.
    big = Decimal("12345678901234567890.123456789") * Decimal("1.000000001")
    assert big == Decimal("12345678913580246791.358024679123456789")


def test_settings_from_toml_or_json_and_unknown_refused():
    assert parse_config("") == {}
    assert parse_config('price = "1"') == {"price": "1"}
    assert parse_config('{"price": "1"}') == {"price": "1"}
    with pytest.raises(PricingError):
        parse_config("price = ")
    with pytest.raises(PricingError):
        parse_config("[1, 2]")
    config = Config({"price": "0.3", "unit": "GiB", "typo": 1})
    assert config.decimal("price", "1") == Decimal("0.3")
    assert config.choice("unit", ["GiB", "MiB"], "GiB") == "GiB"
    with pytest.raises(PricingError, match="typo"):
        config.done()
    with pytest.raises(PricingError, match="string"):
        Config({"price": 0.3}).decimal("price", "1")
    # A policy that takes no settings refuses any.
    with pytest.raises(PricingError, match="unknown settings: x"):
        PerUnit.configure("x = 1")


def test_default_quote_bills_amount_unit_hours():
    assert PerUnit({}).cost_per_hour("m", Decimal(3), 5 * HOUR_NS) == Decimal("1.5")


def test_check_examples_names_the_failing_example():
    class Wrong(PerUnit):
        def examples(self):
            return [Example("ok", step("m", "0", "2"), Decimal(1)), Example("off", step("m", "0", "2"), Decimal(2))]

    with pytest.raises(AssertionError, match="'off': billed 1.0, expected 2"):
        check_examples(Wrong)
