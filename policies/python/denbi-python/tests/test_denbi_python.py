"""The Python de.NBI policy, natively (pytest): the Rust policy's tests."""

from decimal import Decimal

import pytest

from denbi_python import CPU, RAM, Denbi
from os_credits_pricing import PricingError, check_examples, step


def bill(config, metric, previous, current):
    return Denbi.configure(config).bill(step(metric, previous, current))


def test_five_vcpu_hours_cost_five_credits():
    assert bill("", CPU, "100", "105") == Decimal(5)


def test_ram_costs_point_three_per_gib_hour_or_per_1024_mib_hours():
    assert bill("", RAM, "0", "10") == Decimal("3.0")
    assert bill('ram_unit = "MiB"', RAM, "0", "1024") == Decimal("0.3")


def test_quote_for_16_cpus_and_32_gib_is_25_6():
    denbi = Denbi({})
    quote = denbi.cost_per_hour(CPU, Decimal(16), 0) + denbi.cost_per_hour(RAM, Decimal(32), 0)
    assert quote == Decimal("25.6")


def test_prices_are_configurable_and_unknown_settings_refused():
    assert bill('cpu_price = "0.001"', CPU, "0", "1") == Decimal("0.001")
    assert bill('{"cpu_price": "2"}', CPU, "0", "1") == Decimal(2)
    with pytest.raises(PricingError, match="cpu_prize"):
        Denbi.configure("cpu_prize = 2")
    with pytest.raises(PricingError, match="TiB"):
        Denbi.configure('ram_unit = "TiB"')
    with pytest.raises(PricingError, match="go_goroutines"):
        Denbi({}).bill(step("go_goroutines", "1", "2"))


def test_exact_to_the_last_digit():
    # A value as the exporter sends it: no float ever touches it.
    assert bill("", RAM, "10740.1", "10749.617071944445") == Decimal("2.8551215833335")


def test_examples_hold_for_default_and_custom_prices():
    assert check_examples(Denbi) == 1
    assert check_examples(Denbi, 'cpu_price = "2.5"') == 1
