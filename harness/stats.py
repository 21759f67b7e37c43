"""The quantiles the keep rule (harness/decide.py) reads: Student's t from tables, chi-square by Wilson-Hilferty,
Fisher's F.
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


# one-sided 99.75% quantiles of Student's t by degrees of freedom
T_9975 = {1: 127.32, 2: 14.089, 3: 7.453, 4: 5.598, 5: 4.773, 6: 4.317, 7: 4.029, 8: 3.833, 9: 3.690, 10: 3.581,
          12: 3.428, 15: 3.286, 20: 3.153, 25: 3.078, 30: 3.030, 40: 2.971, 60: 2.915, 120: 2.860}


def f_upper_005(d1: int, d2: int) -> float:
    """The 99.5% quantile of Fisher's F(d1, d2): t(d2)^2 at 99.75% for d1 = 1 (the next smaller tabled d2: never
    narrower); for d1 >= 2 the exact F(2, d2), which F(d1 > 2, d2) does not exceed at this level for d2 >= 3 (the
    keep rule asks for 4 or more)."""
    if d1 <= 1:
        return T_9975[max(d for d in T_9975 if d <= max(d2, 1))] ** 2     # beyond 120: 120's (never narrower)
    return d2 / 2 * (0.005 ** (-2 / d2) - 1)
