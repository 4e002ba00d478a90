"""The browser demo: its inference, weights discovery and messages; the app through its API."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepfill.demo import Demo, editor_input, find_weights, preset_hole
from deepfill.models import InpaintGenerator
from deepfill.utils.errors import UserError

H, W = 60, 84  # not a multiple of the model's 8: the demo pads like deepfill-inpaint


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Tiny random weights, or $DEEPFILL_DEMO_WEIGHTS (README's screenshot uses `make train`'s)."""
    if os.environ.get("DEEPFILL_DEMO_WEIGHTS"):
        return Path(os.environ["DEEPFILL_DEMO_WEIGHTS"])
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save({"state_dict": InpaintGenerator(cnum=8).state_dict(), "config": {"cnum": 8}}, path)
    return path


def _photo() -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([x * 3, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)


def _painted(hole: np.ndarray) -> np.ndarray:
    """An editor layer: magenta brush strokes over the hole, transparent elsewhere."""
    layer = np.zeros((*hole.shape, 4), np.uint8)
    layer[hole] = (255, 0, 255, 255)
    return layer


def _hole() -> np.ndarray:
    hole = np.zeros((H, W), bool)
    hole[20:40, 25:60] = True
    return hole


def test_a_painted_layer_is_the_hole() -> None:
    background = np.dstack([_photo(), np.full((H, W), 255, np.uint8)])  # the editor sends RGBA
    image, hole = editor_input({"background": background, "layers": [_painted(_hole())], "composite": None})
    assert image.shape == (H, W, 3) and np.array_equal(image, _photo())
    assert np.array_equal(hole, _hole())
    _, nothing = editor_input({"background": _photo(), "layers": [np.zeros((H, W, 4), np.uint8)]})
    assert nothing is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "no image: upload one"),
        ({"background": None, "layers": []}, "no image: upload one"),
        (
            {"background": np.zeros((1, 1, 3), np.uint8), "layers": []},
            "the image is 1x1; the model needs at least 16",
        ),
        ({"background": np.zeros((20, 20, 2), np.uint8), "layers": []}, "not an RGB image"),
    ],
)
def test_bad_uploads_give_a_message(value, message) -> None:
    with pytest.raises(UserError, match=message):
        editor_input(value)


def test_the_inpainting_is_deepfill_inpaint_s(weights) -> None:
    """Known pixels exact, the hole filled, and the same pixels as inference.inpaint_array."""
    from deepfill.inference import inpaint_array, load_generator

    demo = Demo([], weights, "cpu")
    editor = {"background": _photo(), "layers": [_painted(_hole())]}
    result, _, hole = demo.inpaint(editor, str(weights))
    assert np.array_equal(result.completed[~hole], _photo()[~hole])
    assert not np.array_equal(result.completed[hole], _photo()[hole])
    direct = inpaint_array(load_generator(weights), _photo(), _hole())
    assert np.array_equal(result.completed, direct.completed)
    assert result.flow.shape == result.coarse.shape == result.refined.shape == (H, W, 3)


def test_requests_without_a_hole_or_weights_say_what_to_do(tmp_path, weights) -> None:
    editor = {"background": _photo(), "layers": []}
    with pytest.raises(UserError, match="no hole: paint over the part to fill"):
        Demo([], weights, "cpu").inpaint(editor)
    painted = {"background": _photo(), "layers": [_painted(_hole())]}
    with pytest.raises(UserError, match=r"No weights found under .*make train.*deepfill-convert"):
        Demo([tmp_path], None, "cpu").inpaint(painted)
    with pytest.raises(UserError, match=r"weights: no such file or folder: /nowhere\.pt"):
        Demo([], weights, "cpu").inpaint(painted, "/nowhere.pt")
    with pytest.raises(UserError, match="unknown mask preset 'star'"):
        Demo([], weights, "cpu").inpaint(editor, hole_source="preset", preset="star")


def test_mask_presets_and_large_images(weights) -> None:
    for name in ("box", "free-form", "thin", "medium", "thick"):
        hole = preset_hole(name, 3, H, W)
        assert hole.shape == (H, W) and hole.any()
        assert np.array_equal(hole, preset_hole(name, 3, H, W))  # the seed decides
    demo = Demo([], weights, "cpu", max_side=40)
    editor = {"background": _photo(), "layers": [_painted(_hole())]}
    with pytest.raises(UserError, match="the image is 84x60, above this demo's limit of 40 px"):
        demo.inpaint(editor)
    result, image, hole = demo.inpaint(editor, downscale=True)
    assert image.shape == (29, 40, 3) == result.completed.shape and hole.any()


def test_weights_are_found_newest_first_with_their_run(tmp_path) -> None:
    old = tmp_path / "quickstart" / "runs" / "2026-01-01_10-00-00" / "checkpoints" / "last.ckpt"
    new = tmp_path / "quickstart" / "runs" / "2026-02-01_10-00-00" / "checkpoints" / "best.ckpt"
    converted = tmp_path / "places2_v1.pt"
    official = tmp_path / "release_places2_256"
    for path in (old, new, converted):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    official.mkdir()
    (official / "checkpoint").write_text('model_checkpoint_path: "snap-0"\n')
    (official / "snap-0.index").write_bytes(b"x")
    for age, path in enumerate((new, converted, official / "checkpoint", old)):
        os.utime(path, (time.time() - 100 * age, time.time() - 100 * age))
    options = find_weights([tmp_path, tmp_path / "missing"])
    assert [o.path for o in options] == [new, converted, official, old]
    assert options[0].label.startswith("training run 2026-02-01_10-00-00, best.ckpt")
    assert options[2].label.startswith("official checkpoint release_places2_256/")
    given = Demo([tmp_path], converted, "cpu").options()
    assert given[0].path == converted and len(given) == 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(weights, tmp_path_factory):
    """The app on a free localhost port, as `deepfill-demo` starts it."""
    pytest.importorskip("gradio", reason="the demo extra (make install installs it)")
    from omegaconf import OmegaConf

    from deepfill.cli.demo import serve

    files = tmp_path_factory.mktemp("files")
    port = _free_port()
    cfg = OmegaConf.create(
        {
            "weights": str(weights),
            "search": [str(files / "none")],
            "host": "127.0.0.1",
            "port": port,
            "device": "cpu",
            "max_side": 1024,
            "precision": "fp32",
            "files_dir": str(files),
        }
    )
    app = serve(cfg, block=False)
    yield f"http://127.0.0.1:{port}/", files
    app.close()


def test_the_app_answers_its_api_with_the_known_pixels_kept(served, tmp_path) -> None:
    from gradio_client import Client

    url, _ = served
    Image.fromarray(_photo()).save(tmp_path / "photo.png")
    Image.fromarray(_painted(_hole())).save(tmp_path / "layer.png")
    client = Client(url, verbose=False)
    outputs = _request(client, tmp_path / "photo.png", (tmp_path / "layer.png",))
    *pictures, info, download = outputs
    shown, coarse, refined, result, flow = (np.asarray(Image.open(p).convert("RGB")) for p in pictures)
    assert shown.shape == coarse.shape == refined.shape == flow.shape == (H, W, 3)
    assert (shown[_hole()] == 255).all()  # the input is shown with its hole
    filled = np.asarray(Image.open(download).convert("RGB"))
    assert np.array_equal(filled[~_hole()], _photo()[~_hole()])
    assert not np.array_equal(filled[_hole()], _photo()[_hole()])
    assert np.array_equal(result, filled)  # shown as PNG, not a lossy preview
    assert "84x60 px" in info and "on cpu" in info


def _request(client, background: Path, layers: tuple[Path, ...] = ()):
    """The page's request: the editor's image and painted layers, the first weights, the
    painted hole."""
    from gradio_client import handle_file

    editor = {"background": handle_file(str(background)), "layers": [handle_file(str(p)) for p in layers]}
    return client.predict(editor, None, "painted", "box", 0, False, api_name="/inpaint")


def test_refused_requests_are_one_line_for_the_user_and_in_the_console(served, tmp_path, capfd) -> None:
    """An upload that is not an image, and a request the demo refuses, each give the user one
    line and the server's console one line, no traceback."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, _ = served
    notes = tmp_path / "holiday notes.png"
    notes.write_text("not a picture")
    Image.fromarray(_photo()).save(tmp_path / "photo.png")
    client = Client(url, verbose=False)
    capfd.readouterr()
    with pytest.raises(AppError, match=r"holiday notes\.png: not an image the demo can read"):
        _request(client, notes)
    # A bad request is a message, not a stack trace.
    with pytest.raises(AppError, match="no hole: paint over the part to fill"):
        _request(client, tmp_path / "photo.png")
    console = capfd.readouterr().err
    assert "Traceback" not in console, console[-2000:]
    refusals = [line for line in console.splitlines() if line.startswith("deepfill-demo: refused request: ")]
    assert len(refusals) == 2, console[-2000:]
    assert "holiday notes.png: not an image" in refusals[0] and "no hole" in refusals[1]


def _chromium(profile: Path):
    """Debian's Chromium through its chromedriver, headless; nothing is downloaded."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.fail("chromium and chromedriver are needed: `make test-browser` installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    # No network beyond localhost here: keep Chromium from reaching out (and waiting for it).
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1100",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def _fetch(url: str) -> np.ndarray:
    import io
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))


@pytest.mark.browser
def test_in_a_browser_an_uploaded_photo_with_a_painted_stroke_is_filled(served, tmp_path) -> None:
    """Headless Chromium opens the page, uploads a photo, paints a stroke with the brush,
    presses Inpaint and gets the result: it keeps every pixel outside the stroke and changes
    the pixels under it. The screenshot goes to $DEEPFILL_DEMO_SCREENSHOT (README's picture) or
    the test's folder."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from deepfill.data.datasets import _sample_photo

    url, _ = served
    photo = np.ascontiguousarray(_sample_photo("coffee")[::2, ::2])  # 300x200
    Image.fromarray(photo).save(tmp_path / "coffee.png")
    browser = _chromium(tmp_path / "profile")
    try:
        browser.get(url)
        wait = WebDriverWait(browser, 60)
        upload = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#editor input[type=file]"))[0]
        zoom = "#editor .zoom-number"
        empty_zoom = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, zoom))[0].text
        upload.send_keys(str(tmp_path / "coffee.png"))
        # The canvas takes the photo's size once the upload is in, and the editor zooms to fit it.
        # A stroke painted before that lands on the empty 800x800 canvas (a slow machine got an
        # 800x800 result after a fixed one-second wait).
        wait.until(lambda b: b.find_element(By.CSS_SELECTOR, zoom).text not in ("", empty_zoom))
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#editor button[aria-label='Brush']"))[
            0
        ].click()
        canvas = wait.until(
            lambda b: [c for c in b.find_elements(By.CSS_SELECTOR, "#editor canvas") if c.is_displayed()]
        )[0]
        stroke = ActionChains(browser).move_to_element_with_offset(canvas, -70, -20).click_and_hold()
        for _ in range(14):
            stroke.move_by_offset(10, 3)
        stroke.release().perform()
        browser.find_element(By.CSS_SELECTOR, "#inpaint").click()
        result = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#result img"))[0]
        shown = browser.find_element(By.CSS_SELECTOR, "#input_with_hole img")
        filled, with_hole = _fetch(result.get_attribute("src")), _fetch(shown.get_attribute("src"))
        info = browser.find_element(By.CSS_SELECTOR, "#info").text
        browser.execute_script(
            "arguments[0].scrollIntoView()", browser.find_element(By.CSS_SELECTOR, "#editor")
        )
        time.sleep(0.5)
        screenshot = Path(os.environ.get("DEEPFILL_DEMO_SCREENSHOT", tmp_path / "demo.png"))
        assert browser.save_screenshot(str(screenshot)), screenshot
    finally:
        browser.quit()
    assert filled.shape == photo.shape, info
    stroke_hole = (with_hole == 255).all(axis=-1) & ~(photo == 255).all(axis=-1)
    assert 0.01 < stroke_hole.mean() < 0.5, f"the painted stroke covers {stroke_hole.mean():.1%}"
    changed = (filled != photo).any(axis=-1)
    assert changed[stroke_hole].mean() > 0.5  # filled under the stroke
    assert not changed[~stroke_hole].any()  # every other pixel kept exactly
    assert "300x200 px" in info and "on cpu" in info
