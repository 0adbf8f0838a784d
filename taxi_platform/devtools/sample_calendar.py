"""When synthetic trips happen and how fast traffic moves: demand and street speed by hour, weekday and season."""

from __future__ import annotations

from datetime import date

import numpy as np

US = 1_000_000

# Weekday/weekend pickup-hour demand (relative), hour 0..23.
HOURS_WEEKDAY = np.array([0.9, 0.55, 0.35, 0.25, 0.25, 0.4, 1.0, 2.0, 2.8, 3.0, 2.9, 3.0, 3.2, 3.2, 3.4, 3.5,
                           3.6, 3.9, 4.2, 4.0, 3.6, 3.4, 3.2, 2.2])  # fmt: skip
HOURS_WEEKEND = np.array([2.6, 2.2, 1.7, 1.2, 0.7, 0.45, 0.5, 0.8, 1.3, 1.9, 2.5, 2.9, 3.1, 3.2, 3.2, 3.1,
                           3.1, 3.2, 3.3, 3.1, 2.9, 2.9, 2.9, 2.8])  # fmt: skip
DAY_WEIGHT = np.array([0.90, 0.98, 1.02, 1.07, 1.08, 1.04, 0.88])  # Monday..Sunday
# Typical Manhattan street speed (mph) by hour on weekdays; weekends are faster by day. Calibrated with the
# rest of the trip model on a public sample of real yellow trips of March 2019 (see the module docstring).
SPEED_WEEKDAY = np.array([11.0, 11.9, 12.8, 13.2, 13.2, 11.9, 9.8, 7.6, 6.6, 6.5, 6.6, 6.6, 6.6, 6.6, 6.5, 6.3,
                           6.1, 6.3, 6.6, 7.4, 8.2, 8.9, 9.4, 10.2])  # fmt: skip
SPEED_WEEKEND = SPEED_WEEKDAY * np.array([1.0] * 7 + [1.25] * 13 + [1.1] * 4)
# Seasonality by calendar month: street speeds (summer and holiday-free months faster) and airport share.
SEASON_SPEED = {1: 1.01, 2: 1.01, 3: 1.0, 4: 1.0, 5: 0.99, 6: 0.98, 7: 1.05, 8: 1.06, 9: 0.97, 10: 0.96,
                 11: 0.95, 12: 0.93}  # fmt: skip
SEASON_AIRPORT = {1: 0.95, 2: 0.9, 3: 1.0, 4: 1.0, 5: 1.0, 6: 1.08, 7: 1.15, 8: 1.12, 9: 1.0, 10: 1.0, 11: 1.05,
                   12: 1.1}  # fmt: skip


def month_bounds_us(month: date) -> tuple[int, int, int]:
    start = np.datetime64(month.strftime("%Y-%m"), "M")
    days = int(((start + 1).astype("datetime64[D]") - start.astype("datetime64[D]")).astype(np.int64))
    start_us = int(start.astype("datetime64[us]").astype(np.int64))
    return start_us, days, start_us + days * 86_400 * US
