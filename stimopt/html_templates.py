"""The pages' look: one Jinja2 environment with the shared layout, style and macros; each page
module (stimopt.html_report, stimopt.html_sweep, stimopt.watch) adds its own body template.

Pages are self-contained: inline style and script, no web fonts, no CDN; images are files beside
the page (relative links) or, on the live page, served by the same local server.
"""
from __future__ import annotations

import math

import jinja2

BASE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}stimopt{% endblock %}</title>
<style>
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 72em;
       padding: 0 1em; color: #222; background: #fafafa; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: .4em 0; background: #fff; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[aria-sort=ascending]::after { content: " \25B2"; }
table.sortable th[aria-sort=descending]::after { content: " \25BC"; }
.grid { display: flex; flex-wrap: wrap; gap: .6em; }
figure { margin: 0; text-align: center; background: #fff; border: 1px solid #ddd; padding: .3em; }
figure img { width: 128px; height: 128px; object-fit: contain; image-rendering: pixelated; display: block; }
figcaption { font-size: .85em; font-variant-numeric: tabular-nums; max-width: 128px; overflow-wrap: break-word; }
.bar { display: flex; height: 1.4em; width: 100%; max-width: 40em; border: 1px solid #ccc; }
.bar span { display: block; height: 100%; } .legend span { display: inline-block; width: .9em; height: .9em; margin: 0 .3em 0 1em; }
pre { background: #fff; border: 1px solid #ddd; padding: .6em; overflow: auto; max-height: 30em; }
.muted { color: #888; } .warn { color: #a40; }
</style></head>
<body>
{% block body %}{% endblock %}
</body></html>
"""

MACROS = r"""
{% macro value(v) -%}
{%- if v is mapping -%}
<table>{% for k, x in v.items() %}<tr><th>{{ k }}</th><td>{{ value(x) }}</td></tr>{% endfor %}</table>
{%- elif v is string -%}{{ v }}
{%- elif v is iterable and v and (v | first) is mapping -%}
{%- set cols = v | map("list") | sum(start=[]) | unique | list -%}
<table><tr>{% for c in cols %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in v %}<tr>{% for c in cols %}<td>{{ value(row.get(c, "")) }}</td>{% endfor %}</tr>{% endfor %}</table>
{%- elif v is iterable -%}{% for x in v %}{{ value(x) }}{% if not loop.last %}, {% endif %}{% endfor %}
{%- elif v is none -%}<span class="muted">none</span>
{%- else -%}{{ v | num }}
{%- endif -%}
{%- endmacro %}

{% macro stimuli(items, folder) -%}
<div class="grid">
{% for s in items %}<figure data-id="{{ s.id }}"><img src="{{ folder }}/{{ s.file }}" alt="stimulus {{ s.id }}">
<figcaption><span class="response" data-value="{{ s.response }}">{{ s.response | num }}</span>
<br><span class="muted">gen {{ s.generation }}</span></figcaption></figure>
{% endfor %}</div>
{%- endmacro %}
"""


def num(x) -> str:
    """Numbers as people read them: ints exact, floats to 6 significant digits."""
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.6g}"
    return str(x)


def environment(**pages: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.DictLoader({"base.html": BASE, "macros.html": MACROS, **pages}),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = num
    return env
