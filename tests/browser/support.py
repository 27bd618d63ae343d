"""Browser test helpers: sign in, check a page with axe-core, save screenshots as artifacts.

axe-core comes from npm (tests/browser/package.json, installed by `make test` with `npm ci`)
and is evaluated from node_modules in the page under test: no copy, no CDN.
"""

from __future__ import annotations

from pathlib import Path

from tests.factories import PASSWORD
from tests.support import ROOT

AXE = Path(__file__).resolve().parent / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}


def login(page, base: str, user) -> None:
    page.context.clear_cookies()
    page.goto(f"{base}/login/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("[data-testid=whoami]", state="attached")


def shot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def axe_violations(page) -> list[dict]:
    """axe-core's violations on the page as it is now (every rule axe runs by default)."""
    assert AXE.exists(), f"axe-core is missing: run `make browser-deps` ({AXE})"
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        # Evaluated through the DevTools protocol: the pages' CSP (script-src 'self') forbids
        # the inline <script> that add_script_tag would insert, and must stay on in tests.
        page.evaluate("() => {\n" + AXE.read_text() + "\n}")
        assert page.evaluate("typeof window.axe !== 'undefined'"), "axe-core did not load"
    return page.evaluate(
        """async () => {
            const result = await axe.run(document, {resultTypes: ["violations"]});
            return result.violations.map(v => ({
                id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.slice(0, 5).map(n => n.target.join(" ") + " :: " + n.failureSummary),
            }));
        }"""
    )


def axe_report(violations: list[dict]) -> str:
    lines = []
    for v in violations:
        lines.append(f"[{v['impact']}] {v['id']}: {v['help']}")
        lines.extend(f"    {n}" for n in v["nodes"])
    return "\n".join(lines)


def page_overflows(page) -> list[str]:
    """What makes the page scroll sideways (tables must scroll in their own box): the
    outermost elements reaching past the viewport's right edge; empty when nothing does."""
    return page.evaluate(
        """() => {
            const root = document.documentElement;
            if (root.scrollWidth <= root.clientWidth + 1) return [];
            const width = root.clientWidth, found = [];
            const clipped = el => {
                for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
                    const x = getComputedStyle(a).overflowX;
                    const inside = a.getBoundingClientRect().right <= width + 1;
                    if (x !== "visible" && inside) return true;
                }
                return false;
            };
            for (const el of document.body.querySelectorAll("*")) {
                if (el.getBoundingClientRect().right <= width + 1 || clipped(el)) continue;
                if (found.some(f => f.contains(el))) continue;
                found.push(el);
            }
            if (!found.length) found.push(root);
            return found.slice(0, 5).map(el => el.outerHTML.slice(0, 160));
        }"""
    )
