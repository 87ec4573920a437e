"""MkDocs hooks (mkdocs.yml: ``hooks``): pages generated while the site builds, so none goes stale.

- ``api/julia.md``: the Julia API reference, from the package's docstrings (docs/gen_julia_api.py);
- tables from the engine's schema (pyjlfa/_schema.json, written by ``python -m pyjlfa._schema``):
  a page line ``<!-- schema: rules -->`` (or optimizers, schedules, initialisers) becomes that table;
- ``robustness.md``: a placeholder page, only while the real page does not exist yet.
"""

import os
import sys

from mkdocs.structure.files import File

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gen_julia_api  # noqa: E402  (docs/gen_julia_api.py)
from pyjlfa import _schema  # noqa: E402


def on_files(files, config):
    files.append(File.generated(config, "api/julia.md", content=gen_julia_api.julia_api_markdown()))
    if files.get_file_from_path("robustness.md") is None:
        files.append(File.generated(config, "robustness.md", content=(
            "# Robustness\n\nThis page is being written (`pyjlfa/robustness.py`).\n")))
    return files


def _value(p):
    if "default_from" in p:
        return f"from {p['default_from']}"
    if "default" not in p:
        return "required"
    return "none" if p["default"] is None else f"`{p['default']!r}`".replace("'", '"')


def schema_table(section):
    """The parameters of every entry of a schema section, as a Markdown table."""
    rows = ["| name | parameter | default | expected |", "|---|---|---|---|"]
    for e in _schema.snapshot()[section]:
        if not e["params"]:
            rows.append(f"| `{e['name']}` | (none) | | |")
        for p in e["params"]:
            rows.append(f"| `{e['name']}` | `{p['name']}` | {_value(p)} | {p['expected']} |")
    return "\n".join(rows)


def on_page_markdown(markdown, page, config, files):
    for section in _schema.SECTIONS:
        markdown = markdown.replace(f"<!-- schema: {section} -->", schema_table(section))
    return markdown
