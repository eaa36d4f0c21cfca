"""The documentation of the settings, derived from their declarations (job.config.settings):
the table in docs/configuration.md (`make docs` writes it; a test keeps them equal)."""

from __future__ import annotations

from job.config.settings import VARIABLES


def markdown_table() -> str:
    """docs/configuration.md's variable table, derived from VARIABLES."""
    rows = ["| variable | default | read by | meaning |", "| --- | --- | --- | --- |"]
    for var in VARIABLES:
        also = f" (fallback {', '.join(f'`{n}`' for n in var.fallbacks)})" if var.fallbacks else ""
        shown = var.documented_default()
        rows.append(f"| `{var.name}` | {shown} | {var.side} | {var.meaning}{also} |")
    return "\n".join(rows) + "\n"
