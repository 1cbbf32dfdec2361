"""Help text for typer commands from their docstrings."""

from __future__ import annotations


def help_text(doc: str | None) -> str:
    """A docstring as CLI help: paragraphs kept, the line breaks inside each paragraph joined
    (rich would otherwise keep the source's hard wraps)."""
    paragraphs = (doc or "").strip().split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)
