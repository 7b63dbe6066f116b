"""Schema of the report stage."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReportConfig:
    title: str = "Frontier run report"
