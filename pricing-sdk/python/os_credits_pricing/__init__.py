"""The os-credits pricing SDK for Python.

A policy prices steps of cumulative usage (a counter from one measurement
to the next) in exact decimals. Declare the metrics, the examples and the
configuration as data, write ``bill(usage) -> Decimal``, and end the module
with ``Policy = export(YourPolicy)``; ``componentize-py`` (``make
policies``) builds it into a sandboxed component of the contract
``os-credits:pricing@2.0.0``, the same one Rust policies implement.

Test it natively with pytest: :func:`step` makes a usage,
:func:`check_examples` bills a policy's examples, exactly as the host does
before it activates the module.

Money is ``decimal.Decimal`` throughout: values cross the sandbox as text
and are parsed without rounding; importing the SDK sets the decimal context
to 80 significant digits, rounding half to even and trapping invalid
operations, so a policy's arithmetic is exact; charges are written back as
plain decimal text within what the host's decimals hold (28 significant
digits, 28 decimal places).
"""

from __future__ import annotations

import decimal
import json
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar, Mapping, Optional, Sequence

__all__ = [
    "Config",
    "Example",
    "Measurement",
    "Metric",
    "Policy",
    "PricingError",
    "Usage",
    "check_examples",
    "decimal_text",
    "export",
    "parse_config",
    "parse_decimal",
    "step",
    "HOUR_NS",
]

#: One hour in nanoseconds (timestamps are Unix nanoseconds).
HOUR_NS = 3_600_000_000_000

#: Arithmetic for prices: exact far beyond what a charge needs; rounding
#: only where the host's decimals end (see :func:`decimal_text`).
CONTEXT = decimal.Context(
    prec=80,
    rounding=decimal.ROUND_HALF_EVEN,
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)

# Every policy computes with it: importing the SDK makes it the context of
# this thread and of threads started later (natively under pytest exactly
# as in the component).
decimal.DefaultContext = CONTEXT.copy()
decimal.setcontext(CONTEXT.copy())

#: Significant digits and decimal places the host's decimals hold.
_MAX_DIGITS = 28
_MAX_SCALE = 28


class PricingError(Exception):
    """A step (or a configuration) the policy refuses; the message says why."""


def parse_decimal(text: str) -> Decimal:
    """A decimal from its text (``"10"``, ``"0.3"``, ``"1e3"``, ``"1_000"``),
    exactly; NaN and infinities are refused."""
    try:
        # Decimal() itself ignores surrounding whitespace.
        value = Decimal(text)
    except (decimal.InvalidOperation, ValueError, TypeError) as e:
        raise PricingError(f"not a decimal number: {text!r}") from e
    if not value.is_finite():
        raise PricingError(f"not a finite number: {text!r}")
    return value


def decimal_text(value: Decimal) -> str:
    """``value`` as plain decimal text the host parses exactly: no exponent,
    at most 28 decimal places and 28 significant digits (rounded half to
    even beyond, as the host's own arithmetic rounds)."""
    if not isinstance(value, Decimal):
        raise PricingError(f"a charge must be a Decimal, not {type(value).__name__}")
    if not value.is_finite():
        raise PricingError(f"a charge must be finite, not {value}")
    text = format(value, "f")
    # The common case, without taking the number apart: at most 28
    # characters hold at most 28 digits and 27 places; no sign, so no -0.
    if len(text) <= _MAX_DIGITS and text[0] != "-" and value:
        return text
    sign, digits, exponent = value.as_tuple()
    if -exponent > _MAX_SCALE or len(digits) > _MAX_DIGITS:
        if -exponent > _MAX_SCALE:
            value = value.quantize(Decimal(1).scaleb(-_MAX_SCALE), context=CONTEXT)
        if len(value.as_tuple().digits) > _MAX_DIGITS:
            with decimal.localcontext(CONTEXT) as ctx:
                ctx.prec = _MAX_DIGITS
                value = +value
    if not value:
        return "0"
    return format(value, "f")


def parse_config(text: str) -> dict[str, Any]:
    """A site's configuration: empty for the defaults, JSON if it starts
    with ``{``, TOML otherwise."""
    text = text.strip()
    if not text:
        return {}
    try:
        if text.startswith("{"):
            parsed = json.loads(text)
        else:
            parsed = tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise PricingError(f"cannot read the configuration: {e}") from e
    if not isinstance(parsed, dict):
        raise PricingError("the configuration must be a table of settings")
    return parsed


class Config:
    """Reads settings out of a parsed configuration, each with its default;
    :meth:`done` refuses whatever setting nobody asked for (a misspelt key
    must not silently price with the default)."""

    def __init__(self, settings: Mapping[str, Any]):
        self._rest = dict(settings)

    def decimal(self, key: str, default: str) -> Decimal:
        """A decimal setting (as a string, or an integer)."""
        value = self._rest.pop(key, default)
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise PricingError(f"{key}: give a decimal as a string, e.g. {key} = \"0.3\"")
        return parse_decimal(str(value))

    def choice(self, key: str, choices: Sequence[str], default: str) -> str:
        """One of ``choices``."""
        value = self._rest.pop(key, default)
        if value not in choices:
            raise PricingError(f"{key}: {value!r} is not one of {', '.join(choices)}")
        return value

    def value(self, key: str, default: Any = None) -> Any:
        """Any other setting, as parsed."""
        return self._rest.pop(key, default)

    def done(self) -> None:
        """Refuses the settings not read."""
        if self._rest:
            raise PricingError(f"unknown settings: {', '.join(sorted(self._rest))}")


@dataclass(frozen=True)
class Metric:
    """A metric the policy prices, as the portal shows it."""

    #: The measurement name as it arrives, e.g. ``project_vcpu_usage``.
    name: str
    #: The short name the portal's APIs use, e.g. ``cpu``.
    friendly_name: str
    #: The unit of the cumulative value, e.g. ``vCPU-hours``.
    unit: str
    #: What it measures.
    description: str
    #: The type of the amounts a quote takes: ``int`` or ``decimal``.
    amount_type: str = "int"

    @classmethod
    def decimal(cls, name: str, friendly_name: str, unit: str, description: str) -> "Metric":
        """A metric whose quotes take decimal amounts (e.g. GiB of RAM)."""
        return cls(name, friendly_name, unit, description, "decimal")


# Measurement and Usage are made for every step the host sends: slotted
# classes with plain assignment (a frozen dataclass sets each field through
# object.__setattr__, several times slower). Treat them as read-only.
@dataclass(slots=True)
class Measurement:
    """One measurement of a cumulative counter."""

    #: Unix time in nanoseconds.
    timestamp_ns: int
    #: The value's text as it arrived.
    value: str


@dataclass(slots=True)
class Usage:
    """A step of one counter to price: from ``previous`` to ``current``
    (newer, and higher)."""

    metric: str
    project: str
    location_id: str
    previous: Measurement
    current: Measurement
    #: The tags of the current measurement the policy reads.
    tags: Mapping[str, str] = field(default_factory=dict)

    def delta(self) -> Decimal:
        """How much the counter grew, exactly."""
        return CONTEXT.subtract(parse_decimal(self.current.value), parse_decimal(self.previous.value))

    def hours(self) -> Decimal:
        """The step's length in hours, exactly."""
        ns = self.current.timestamp_ns - self.previous.timestamp_ns
        return CONTEXT.divide(Decimal(ns), Decimal(HOUR_NS))

    def at(self, previous_ns: int, current_ns: int) -> "Usage":
        """The same step between other times (Unix ns)."""
        return Usage(
            self.metric,
            self.project,
            self.location_id,
            Measurement(previous_ns, self.previous.value),
            Measurement(current_ns, self.current.value),
            self.tags,
        )

    def with_tags(self, **tags: str) -> "Usage":
        """The same step with these tags."""
        return Usage(self.metric, self.project, self.location_id, self.previous, self.current, tags)


@dataclass(frozen=True)
class Example:
    """A step with the exact charge the policy must give for it; the host
    bills every example before it activates the module."""

    name: str
    usage: Usage
    expected: Decimal


def step(metric: str, previous: str, current: str) -> Usage:
    """A step of ``metric`` from ``previous`` to ``current`` over one hour
    (from time 0), for project ``test-project`` at site ``1``: what the Rust
    SDK's ``testing::step`` makes."""
    return Usage(
        metric,
        "test-project",
        "1",
        Measurement(0, previous),
        Measurement(HOUR_NS, current),
    )


class Policy:
    """A pricing policy. Set the class attributes, write :meth:`bill`; take
    settings in ``__init__`` (see :class:`Config`)."""

    #: The policy's name and version (shown in ``/api/policies``, stamped on
    #: every charge).
    name: ClassVar[str] = ""
    version: ClassVar[str] = "0.0.0"
    description: ClassVar[str] = ""
    #: The metrics it prices.
    metrics: ClassVar[Sequence[Metric]] = ()
    #: The tags ``bill`` reads: ``None`` for all of them; by default none
    #: (tags a policy does not read are not copied into the sandbox).
    tags: ClassVar[Optional[Sequence[str]]] = ()

    def __init__(self, settings: Mapping[str, Any]):
        """Takes the site's settings; by default there are none."""
        Config(settings).done()

    def describe_metrics(self) -> Sequence[Metric]:
        """The metrics as configured (override when settings change a unit)."""
        return self.metrics

    def bill(self, usage: Usage) -> Decimal:
        """The exact credits the step costs, never negative; raise
        :class:`PricingError` for a step that cannot be priced."""
        raise NotImplementedError

    def cost_per_hour(self, metric: str, amount: Decimal, at_ns: int) -> Decimal:
        """The credits one hour of ``amount`` units of ``metric`` costs at
        ``at_ns``. By default, what :meth:`bill` charges for ``amount``
        unit-hours over the hour before: right for any per-unit-hour price."""
        return self.bill(
            Usage(metric, "", "", Measurement(at_ns - HOUR_NS, "0"), Measurement(at_ns, decimal_text(amount)))
        )

    def examples(self) -> Sequence[Example]:
        """Steps with the charges they must give."""
        return ()

    @classmethod
    def configure(cls, config: str) -> "Policy":
        """An instance for the configuration text (TOML or JSON)."""
        return cls(parse_config(config))


def check_examples(policy: type[Policy], config: str = "") -> int:
    """Bills every example of ``policy`` configured with ``config``, as the
    host does before it activates the module; returns how many held and
    raises ``AssertionError`` naming the first that does not."""
    instance = policy.configure(config)
    examples = list(instance.examples())
    for example in examples:
        try:
            charge = instance.bill(example.usage)
        except PricingError as e:
            raise AssertionError(f"example {example.name!r}: {e}") from e
        if charge != example.expected:
            raise AssertionError(f"example {example.name!r}: billed {charge}, expected {example.expected}")
    return len(examples)


def export(policy: type[Policy]) -> type:
    """The class ``componentize-py`` exports for ``policy``: end a policy
    module with ``Policy = export(MyPolicy)``."""
    from os_credits_pricing._glue import exported

    return exported(policy)
