"""The de.NBI pricing policy in Python: ``project_vcpu_usage`` at 1 credit
per vCPU-hour, ``project_mb_usage`` at 0.3 credits per GiB-hour; the same
prices, settings and charges as the Rust ``policies/denbi``.

Settings (all optional): ``cpu_price``, ``ram_price`` (credits per unit
hour, as strings) and ``ram_unit`` (``"GiB"``, or ``"MiB"`` for the 2019
exporter, which divides the RAM price by 1024).
"""

from decimal import Decimal

from os_credits_pricing import Config, Example, Metric, Policy, PricingError, export, step

CPU = "project_vcpu_usage"
RAM = "project_mb_usage"


class Denbi(Policy):
    name = "denbi-python"
    version = "1.0.0"
    description = "de.NBI: credits per vCPU-hour and RAM-hour (Python)"
    metrics = (
        Metric(CPU, "cpu", "vCPU-hours", "Amount of vCPUs."),
        Metric.decimal(RAM, "ram", "GiB-hours", "Amount of RAM."),
    )

    def __init__(self, settings):
        config = Config(settings)
        self.cpu_price = config.decimal("cpu_price", "1")
        self.ram_price = config.decimal("ram_price", "0.3")
        self.ram_unit = config.choice("ram_unit", ["GiB", "MiB"], "GiB")
        config.done()
        if self.ram_unit == "MiB":
            self.ram_price = self.ram_price / 1024

    def describe_metrics(self):
        if self.ram_unit == "MiB":
            return (self.metrics[0], Metric.decimal(RAM, "ram", "MiB-hours", "Amount of RAM."))
        return self.metrics

    def bill(self, usage):
        if usage.metric == CPU:
            return usage.delta() * self.cpu_price
        if usage.metric == RAM:
            return usage.delta() * self.ram_price
        raise PricingError(f"de.NBI policy does not price {usage.metric}")

    def examples(self):
        return [Example("+5 vCPU-hours", step(CPU, "10", "15"), self.cpu_price * 5)]


Policy = export(Denbi)
