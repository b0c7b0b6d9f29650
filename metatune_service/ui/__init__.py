"""The dashboard under ``/ui``: server-rendered pages (Jinja2) whose charts plotly.js draws from
the data of :mod:`metatune.figures`, the same data the PNGs of ``metatune compare`` are drawn
from. Everything a page loads is served here (plotly.js from plotly's own wheel)."""
