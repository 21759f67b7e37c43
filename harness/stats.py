"""The quantiles the keep rule (harness/decide.py) reads: Student's t from a table, chi-square by Wilson-Hilferty.
No scipy: a handful of quantiles at fixed levels, each tested against published values (tests/test_decide.py)."""

from __future__ import annotations

import math

# one-sided 97.5% quantiles of Student's t by degrees of freedom (beyond 30: the normal's 1.96)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}


def t_quantile(dof: int) -> float:
    """One-sided 97.5% quantile of Student's t (the next smaller tabled dof: never narrower); 1.96 beyond 30."""
    return math.inf if dof < 1 else 1.96 if dof > 30 else T_975[max(d for d in T_975 if d <= dof)]


def chi2_lower_05(dof: int) -> float:
    """The 5% quantile of chi-square with dof degrees of freedom (Wilson-Hilferty; within 2% from dof 3 on)."""
    k = max(dof, 1)
    return k * max(1 - 2 / (9 * k) - 1.645 * math.sqrt(2 / (9 * k)), 0.01) ** 3


def chi2_upper_001(dof: int) -> float:
    """The 99.9% quantile of chi-square with dof degrees of freedom (exact for 1 and 2; Wilson-Hilferty after)."""
    if dof <= 2:
        return {1: 10.828, 2: 13.816}[max(dof, 1)]
    return dof * (1 - 2 / (9 * dof) + 3.090 * math.sqrt(2 / (9 * dof))) ** 3
