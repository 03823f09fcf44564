"""A reader of the HTML pages trilens writes (reports, the demo): sections, verdicts, figures, scripts, and any
src or href that would reach outside the page."""

from html.parser import HTMLParser


class Page(HTMLParser):
    """What the checks read from the report: sections, verdict cells, figure divs, and anything fetched from outside."""

    def __init__(self):
        super().__init__()
        self.sections, self.verdicts, self.figures, self.external, self.scripts = [], [], 0, [], 0
        self._in_verdict = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs["id"])
        if tag == "td" and "verdict" in (attrs.get("class") or ""):
            self._in_verdict = True
        if tag == "div" and "plotly-graph-div" in (attrs.get("class") or ""):
            self.figures += 1
        if tag == "script":
            self.scripts += 1
        for key in ("src", "href"):
            if (attrs.get(key) or "").startswith(("http:", "https:", "//")):
                self.external.append(attrs[key])

    def handle_data(self, data):
        if self._in_verdict:
            self.verdicts.append((self.sections[-1], data))
            self._in_verdict = False


def read(path):
    page = Page()
    page.feed(path.read_text())
    return page
