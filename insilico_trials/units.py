"""Every unit constant, once.

Trial time is in days (``*_days``) or months (``*_months``); PK time in hours (``*_h``). A month
is a twelfth of a Julian year, as in the survival literature: 365.25 / 12 = 30.4375 days.
"""

from __future__ import annotations

__all__ = ["DAYS_PER_MONTH", "DAYS_PER_WEEK", "DAYS_PER_YEAR", "HOURS_PER_DAY", "MONTHS_PER_YEAR"]

DAYS_PER_YEAR = 365.25
MONTHS_PER_YEAR = 12.0
DAYS_PER_MONTH = DAYS_PER_YEAR / MONTHS_PER_YEAR  # 30.4375, exact in binary floating point
DAYS_PER_WEEK = 7.0
HOURS_PER_DAY = 24.0
