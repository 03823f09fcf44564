"""mkdocs hook: the page holding ``<!-- cli-reference -->`` gets every subcommand's usage and options, generated from
trilens's own argparse parsers (so the reference cannot drift from the command line)."""

from __future__ import annotations

import argparse

MARKER = "<!-- cli-reference -->"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _section(name: str, parser: argparse.ArgumentParser, depth: int) -> list[str]:
    parser.prog = name
    help_text = parser.format_help().replace("```", "'''")
    out = [f"{'#' * depth} `{name}`", "", "```text", help_text.rstrip(), "```", ""]
    for sub_name, sub in _subparsers(parser).items():
        out += _section(f"{name} {sub_name}", sub, min(depth + 1, 4))
    return out


def reference() -> str:
    from trilens.cli.main import build_parser

    parser = build_parser()
    lines = _section("trilens", parser, 2)
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, reference())
