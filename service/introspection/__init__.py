"""Per-layer introspection: activation statistics, attributions and pictures."""

from service.introspection.stats import (
    ReferenceStatsCache,
    compute_reference_stats,
    inactive_mask,
    inactive_rule,
    instance_stats,
    reference_unit_stats,
)

__all__ = [
    "ReferenceStatsCache",
    "compute_reference_stats",
    "inactive_mask",
    "inactive_rule",
    "instance_stats",
    "reference_unit_stats",
]
