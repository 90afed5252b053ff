"""The lexical pieces of dbt's Jinja-templated SQL that fingerprints and code scans share."""

from __future__ import annotations

import re

JINJA_COMMENT = re.compile(r"\{#.*?#\}", re.DOTALL)
# `{{ ... }}` and `{% ... %}`, whitespace control included: the only places Jinja names live.
JINJA_BLOCK = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.DOTALL)
# Quoted text and SQL comments. Every alternative starts with a literal character, which lets
# the regex engine skip ahead to candidates at C speed.
QUOTED_OR_COMMENT = re.compile(
    r"""'[^'\\]*(?:\\.[^'\\]*)*'?|"[^"\\]*(?:\\.[^"\\]*)*"?|`[^`]*`?"""
    r"|--[^\n]*|/\*.*?(?:\*/|\Z)",
    re.DOTALL,
)
QUOTES = frozenset("'\"`")
