"""Sphinx hooks of the adlearn book (loaded from ``_config.yml``: ``sphinx.local_extensions``).

sphinx-thebe registers its inline configuration script each time Sphinx reads documents, so a
page can carry it twice and the browser reports "THEBE_JS_URL has already been declared". Every
page keeps one copy of each script.
"""

from __future__ import annotations


def _one_copy_of_each_script(app, pagename, templatename, context, doctree) -> None:
    seen, unique = set(), []
    for script in context.get("script_files", []):
        attributes = getattr(script, "attributes", {})
        # the same inline script comes once with filename None and once with "": one key
        filename = getattr(script, "filename", script) or ""
        key = (str(filename), tuple(sorted(attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _one_copy_of_each_script)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
