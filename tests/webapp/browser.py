"""Driving pages in headless Chromium: sign in, wait for a video, keep a screenshot of what was seen."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from django.conf import settings

needs_chromium = pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="needs Debian's chromium and chromium-driver (scripts/browser.sh)",
)
SIZE = (1400, 1000)


def start_chromium(*, javascript: bool = True):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--autoplay-policy=no-user-gesture-required",
        f"--window-size={SIZE[0]},{SIZE[1]}",
    ):
        options.add_argument(flag)
    if not javascript:
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(30)
    return driver


def sign_in(driver, base: str, username: str, password: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{base}/accounts/login/")
    driver.find_element(By.NAME, "username").send_keys(username)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(driver, 20).until(lambda d: "/accounts/login/" not in d.current_url)


def video_facts(driver, selector: str = "video"):
    """Wait until the first matching video has its metadata, then read what the browser decoded."""
    from selenium.webdriver.support.ui import WebDriverWait

    script = f"const v = document.querySelector({selector!r});"
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script(script + "if (v && v.readyState === 0) v.load(); return v && v.readyState >= 1;")
    )
    return driver.execute_script(script + "return [v.videoWidth, v.videoHeight, v.duration];")


def screenshot(driver, name: str) -> Path:
    """Save what the page shows at 1400x1000 under var/test/screenshots/NAME.png."""
    folder = Path(settings.VAR_DIR) / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
