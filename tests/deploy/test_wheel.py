"""The built wheel carries the catalogues, templates and migrations: installed alone, it renders a page.

The wheel is built from this checkout (pip's isolated build, setuptools from the index)
and installed without dependencies into a fresh virtual environment; the dependencies
come from the test environment's site-packages through a path file. The check runs from
a temporary folder, so the package can only come from the wheel.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import textwrap
import venv
from pathlib import Path

import pytest

from tests.deploy.tools import REPO

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import asyncio, pathlib, sys, fleetwatch
    from fleetwatch.adapters.catalogues import load_catalogues
    from fleetwatch.adapters.notice_page import NoticePages
    from fleetwatch.adapters.sqlite import SqliteStore
    from fleetwatch.core.calendar import Calendar
    from fleetwatch.core.catalogue import Context
    from fleetwatch.merchant_notices import MerchantNotices

    async def main():
        store = await SqliteStore.open(sys.argv[1])  # the migrations are package data too
        notices = MerchantNotices(store, load_catalogues(), Context(), Calendar(), recent_hours=24,
                                  default_lang="zh-CN")
        html = NoticePages(notices).page(await notices.notice("M1", "zh-CN", 1.8e9))
        await store.close()
        return html

    print(fleetwatch.__file__)
    print(asyncio.run(main()))
""")


def test_the_installed_wheel_renders_a_merchant_page(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    [wheel] = dist.glob("fleetwatch-*.whl")
    env = tmp_path / "venv"
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    out = subprocess.run([str(python), "-c", SCRIPT, str(tmp_path / "store.db")], check=True, capture_output=True,
                         text=True, cwd=tmp_path, timeout=120).stdout
    location, html = out.split("\n", 1)
    assert location.startswith(str(site)), location
    assert "您的POS机都工作正常" in html
    assert "<style>" in html
