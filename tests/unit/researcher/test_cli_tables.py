"""The researcher's tables show a site's words as text: no markup, no terminal escapes."""

from __future__ import annotations

import io

from rich.console import Console

from researcher.cli import round_table
from researcher.results import RoundReport, SiteRoundReport


def test_a_site_error_with_markup_renders_as_text():
    rr = RoundReport(round=3, seconds=1.0, sites=[
        SiteRoundReport(site="evil", ok=False, error="[/bogus] [bold]fake ok[/bold] \x1b[2K")])
    buffer = io.StringIO()
    Console(file=buffer, width=200).print(round_table(rr))  # raised MarkupError before
    text = buffer.getvalue()
    assert "[/bogus]" in text and "[bold]fake ok[/bold]" in text and "\x1b" not in text


def test_a_site_name_with_markup_renders_as_text():
    rr = RoundReport(round=1, seconds=1.0, sites=[
        SiteRoundReport(site="[/x][bold green]st-agnes[/]", ok=True, n_k=3, epsilon=1.0,
                        target_epsilon=8.0, noise_multiplier=1.0, steps=2, seconds=1.0)])
    buffer = io.StringIO()
    Console(file=buffer, width=200).print(round_table(rr))
    assert "[/x][bold green]st-agnes[/]" in buffer.getvalue()
