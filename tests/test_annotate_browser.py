"""The annotation page in a real headless browser (Debian's Chromium + chromedriver, via selenium): draw strokes
with the pointer, switch class and undo with the keyboard, go to the next image (which saves), and check the saved
PNG pixel by pixel against the page's brush (disc of width w, BLPSeg DDA between pointer positions)."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest

from weakseg.annotate.server import create_app, serve
from weakseg.annotate.store import open_store
from weakseg.utils.io import read_label, save_image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (make install puts Debian's chromium "
                                                          "and chromium-driver in place where apt-get exists)")
H, W = 48, 64


def brush(w: int) -> list[tuple[int, int]]:
    r = w // 2
    return [(dr, dc) for dr in range(-r, r + 1) for dc in range(-r, r + 1) if dr * dr + dc * dc <= (w / 2) ** 2]


def draw_expected(label: np.ndarray, p1, p2, value: int, w: int = 3) -> None:
    """The page's stroke from p1 to p2 (one pointer move): stamps at both ends and along the DDA line."""
    (r1, c1), (r2, c2) = p1, p2
    m = max(abs(r2 - r1), abs(c2 - c1))
    pts = [p1, p2] + ([(int(r1 + i * (r2 - r1) / m), int(c1 + i * (c2 - c1) / m)) for i in range(m)] if m > 1 else [])
    for r, c in pts:
        for dr, dc in brush(w):
            if 0 <= r + dr < label.shape[0] and 0 <= c + dc < label.shape[1]:
                label[r + dr, c + dc] = value


@pytest.fixture
def page(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_bin = shutil.which("chromedriver")
    if driver_bin is None:
        pytest.fail("chromium is installed but chromedriver is not: apt-get install chromium-driver")
    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        save_image(images / f"{name}.png", rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    (tmp_path / "classes.txt").write_text("background\nhorse\n")
    store, _ = open_store(images, tmp_path / "labels", tmp_path / "classes.txt")
    server = serve(create_app(store, "secret-token"), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # to check the page logs no error
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1000,700"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_bin), options=opts)
    driver.set_page_load_timeout(20)
    try:
        driver.get(f"http://127.0.0.1:{server.port}/?token=secret-token")
        yield driver, store
    finally:
        driver.quit()
        server.shutdown()
        thread.join(5)


def wait_for(driver, script: str, timeout: float = 10.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: d.execute_script(script))


def test_stroke_drawn_on_the_page_is_saved_pixel_exact(page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.keys import Keys

    driver, store = page
    wait_for(driver, "return document.body.dataset.ready === 'a'")
    rect = driver.execute_script("return document.getElementById('scribble-layer').getBoundingClientRect().toJSON()")
    assert rect["width"] > 4 * W  # fitted to the viewport: one image pixel is several screen pixels

    def at(r, c):  # the screen point at the centre of image pixel (r, c)
        return (round(rect["left"] + (c + 0.5) * rect["width"] / W),
                round(rect["top"] + (r + 0.5) * rect["height"] / H))

    def stroke(p1, p2):
        ab = ActionBuilder(driver)
        ab.pointer_action.move_to_location(*at(*p1)).pointer_down().move_to_location(*at(*p2)).pointer_up()
        ab.perform()

    expected = np.full((H, W), 255, np.uint8)
    stroke((20, 8), (20, 50))                   # default class: the first foreground class (horse = 1), brush 3
    draw_expected(expected, (20, 8), (20, 50), 1)
    ActionChains(driver).send_keys("1").perform()   # key 1 → background
    stroke((4, 30), (41, 30))
    draw_expected(expected, (4, 30), (41, 30), 0)
    stroke((40, 5), (40, 60))                   # drawn, then undone
    ActionChains(driver).key_down(Keys.CONTROL).send_keys("z").key_up(Keys.CONTROL).perform()
    assert driver.execute_script("return document.getElementById('tag-1').checked")  # pre-filled from the strokes
    ActionChains(driver).send_keys("n").perform()  # next image: saves first
    wait_for(driver, "return document.body.dataset.ready === 'b'")

    saved = read_label(store.scribble_path("a"))
    assert saved.shape == (H, W)
    assert np.array_equal(saved, expected), np.argwhere(saved != expected)[:10]
    assert (store.out / "ImageSets/Segmentation/train.txt").read_text() == "a\n"
    assert driver.execute_script("return document.getElementById('progress').textContent") == "annotated 1 / 2"
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
