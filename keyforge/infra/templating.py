"""The one Jinja2 environment keyforge renders with.

Templates hold layout only: every value reaching them has already been validated and quoted in
Python. ``StrictUndefined`` turns a missing variable into an error instead of an empty string,
and autoescape is off because none of the outputs is HTML.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2


def templates_dir() -> Path:
    """Where the templates are: inside the installed package, else the source tree's top level."""
    package = Path(__file__).resolve().parent.parent
    packaged = package / "templates"
    if packaged.is_dir():
        return packaged
    # running from a source checkout or an editable install: templates/ sits beside keyforge/
    return package.parent / "templates"


@functools.cache
def environment() -> jinja2.Environment:
    # imported here, not at the top: modules that render only on some paths (capture, sync's
    # judgement of a refused push) stay cheap to import for the paths that never render
    import jinja2  # noqa: PLC0415

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - the outputs are shell, cron and sshd files, not HTML
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template_name: str, **values: Any) -> str:
    return environment().get_template(template_name).render(**values)
