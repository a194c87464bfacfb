"""A hostile Python policy for the tests: bills 1 credit per unit, except
for project ``loop`` (never returns) and project ``hog`` (allocates
without bound). The host must contain both: that step fails alone, the
rest is billed."""

from os_credits_pricing import Metric, Policy, export


class Hostile(Policy):
    name = "hostile-python"
    version = "1.0.0"
    description = "loops and allocates on demand"
    metrics = (Metric("project_vcpu_usage", "cpu", "vCPU-hours", "Amount of vCPUs."),)

    def bill(self, usage):
        if usage.project == "loop":
            while True:
                pass
        if usage.project == "hog":
            hoard = []
            while True:
                hoard.append(bytearray(1 << 20))
        return usage.delta()


Policy = export(Hostile)
