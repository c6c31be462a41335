"""Argo's UI as a user reads it: the pages of the local argo-server in a real Chromium.

Selectors are those of Argo Workflows 3.7's UI (ui/src/workflows/components): the list's rows
(``.workflows-list__row-container``), the graph's nodes (an SVG ``<g>`` whose ``<title>`` is
"ID (display name)" and whose ``g.node`` carries the phase as a class)."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from browser import new_page, screenshot
from playwright.sync_api import Browser, Page


@dataclass(frozen=True)
class Row:
    """One workflow as the list shows it."""

    workflow: str  # from the row's link
    title: str  # the first line of the name cell: Argo renders our title annotation there
    description: str  # its second line
    status: str  # the status icon's class: success, failure, error, running, ...
    progress: str
    run: str  # the "Run" column (the ConfigMap's columns: label mlops.dev/run-id)


# One object per row, read in the page (one round trip, not one per cell).
ROWS_JS = """() => [...document.querySelectorAll('.workflows-list__row-container')].map(row => {
    const link = row.querySelector('a[href*="/workflows/"]');
    const name = row.querySelector('.wf-rows-name');
    const icon = row.querySelector('.workflows-list__status i[class*="status-icon--"]');
    const cells = [...row.querySelectorAll('.small-11 > .columns')].map(c => c.innerText.trim());
    return {
        href: link ? link.getAttribute('href') : '',
        name: name ? name.innerText : '',
        icon: icon ? icon.className : '',
        cells: cells,
    };
})"""

NAMES_SHOWN_JS = """() => [...document.querySelectorAll('.workflows-list__row-container')]
    .every(row => (row.querySelector('.wf-rows-name')?.innerText || '').trim() !== '')"""

# Graph nodes: display name -> phase.
NODES_JS = """() => Object.fromEntries([...document.querySelectorAll('svg g > title')].map(t => {
    const m = t.textContent.match(/^\\S+ \\((.*)\\)$/);
    const node = t.parentElement.querySelector(':scope > g.node');
    return [m ? m[1] : t.textContent, node ? node.getAttribute('class').replace('node', '').trim() : ''];
}))"""


class ArgoUI:
    def __init__(self, browser: Browser, url: str, shots: Path) -> None:
        self.browser, self.url, self.shots = browser, url.rstrip("/"), shots

    def page(self) -> Page:
        return new_page(self.browser)

    def shot(self, page: Page, name: str) -> Path:
        path: Path = screenshot(page, self.shots, name)
        return path

    def open_list(self, page: Page, namespace: str, label: str | None = None) -> None:
        """The workflow list of ``namespace``; ``label``: its label filter (``key=value``), as the
        page puts it into its own URL when a user types it into the LABELS filter."""
        query = f"?label={urllib.parse.quote(label)}" if label else ""
        page.goto(f"{self.url}/workflows/{namespace}{query}")
        page.locator(".workflows-list__row-container").first.wait_for()
        # And every row's name cell filled in: the list can show its rows a moment before (a CI
        # run read the right rows with empty titles). Argo shows the name when there is no title.
        page.wait_for_function(NAMES_SHOWN_JS, timeout=30_000)

    def rows(self, page: Page) -> list[Row]:
        rows = []
        for raw in page.evaluate(ROWS_JS):
            # Header order: NAME NAMESPACE STARTED FINISHED DURATION PROGRESS MESSAGE DETAILS
            # ARCHIVED, then the ConfigMap's columns (Run).
            cells = raw["cells"]
            title, _, description = raw["name"].partition("\n")
            status = next(
                (c.removeprefix("status-icon--") for c in raw["icon"].split() if "--" in c), ""
            )
            rows.append(
                Row(
                    workflow=raw["href"].split("?")[0].rsplit("/", 1)[-1],
                    title=title.strip(),
                    description=description.strip(),
                    status=status,
                    progress=cells[5] if len(cells) > 5 else "",
                    run=cells[9] if len(cells) > 9 else "",
                )
            )
        return rows

    def open_workflow(self, page: Page, namespace: str, name: str) -> None:
        page.goto(f"{self.url}/workflows/{namespace}/{name}")
        page.locator("svg g.node").first.wait_for()

    def nodes(self, page: Page) -> dict[str, str]:
        """The graph's nodes: display name -> phase (Succeeded, Failed, Error, Running, ...)."""
        value: dict[str, str] = page.evaluate(NODES_JS)
        return value

    def click_node(self, page: Page, display_name: str) -> None:
        """Select a node of the graph, as a click on it does: its panel opens."""
        handle = page.evaluate_handle(
            """name => [...document.querySelectorAll('svg g > title')]
                .find(t => t.textContent.endsWith(` (${name})`))
                ?.parentElement.querySelector(':scope > g.node')""",
            display_name,
        )
        element = handle.as_element()
        assert element is not None, f"no node {display_name!r} in the graph: {self.nodes(page)}"
        element.click()
