"""What a maintenance pause says about itself, the same in every place that shows it."""

from __future__ import annotations

from datetime import datetime


def pause_text(paused_at: datetime | None, reason: str) -> str:
    """``paused since 2026-12-02T11:30:00+00:00 (reason)``; the reason only when given."""
    since = paused_at.isoformat(timespec="seconds") if paused_at is not None else "an unknown time"
    return f"paused since {since}" + (f" ({reason})" if reason else "")
