"""The page of `asr serve` in a real browser: headless Chromium (Debian's chromium and chromium-driver) driven by
selenium uploads recordings and sees their transcripts, and records the microphone, Chromium's fake one playing a
real FSDD recording, and sees its digit.

Without Chromium these tests are skipped, except under CI (CI=true), where .ci/run installs it and they must run.
ASR_SERVE_SCREENSHOT=path keeps a screenshot of the page with its transcripts (docs/serve-page.png comes from it).
"""
import os
import shutil
import time

import numpy as np
import pytest
import soundfile
from test_serve import Server

import asr
from asr.audio import SAMPLE_RATE, load_samples, resample
from asr.transcribe import format_srt, transcribe_file

pytest_plugins = ["digits_model"]

CAPTURE_RATE = 48000  # what Chromium's audio capture runs at


@pytest.fixture(scope="module")
def browser_paths():
    """Chromium and chromedriver, checked before anything else is set up: a skip costs nothing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    if os.environ.get("CI") == "true":
        pytest.fail("CI=true but chromium or chromedriver is missing: .ci/run installs them (apt-get install "
                    "chromium chromium-driver)")
    pytest.skip("needs Chromium and its driver: apt-get install chromium chromium-driver")


def fake_microphone_wav(utterance, path):
    """The utterance as Chromium's fake microphone plays it, over and over: 48 kHz 16-bit, with the recordings'
    noise floor 0.6 s before it (the page starts recording a moment after the device opens) and 2 s after, longer
    than the page records, so that the recording ends before the next repetition starts."""
    rng = np.random.default_rng(0)
    wave = load_samples(utterance.audio)
    floor = 10 ** (-75 / 20)
    wave = np.concatenate([rng.standard_normal(round(0.6 * SAMPLE_RATE)).astype(np.float32) * floor, wave,
                           rng.standard_normal(2 * SAMPLE_RATE).astype(np.float32) * floor])
    soundfile.write(path, resample(wave, SAMPLE_RATE, CAPTURE_RATE), CAPTURE_RATE, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def spoken(digits_model):
    """Three recordings of different digit strings, and one single digit for the microphone."""
    by_length = {}
    for utterance in digits_model.utterances:
        by_length.setdefault(len(utterance.text.split()), utterance)
    return [by_length[3], by_length[2], by_length[1]]


@pytest.fixture(scope="module")
def browser(browser_paths, digits_model, spoken, tmp_path_factory):
    chromium, driver_path = browser_paths
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    microphone = fake_microphone_wav(spoken[2], tmp_path_factory.mktemp("microphone") / "digit.wav")
    server = Server(digits_model.model, "--model-name", "digits")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,1000",
                     "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                     f"--use-file-for-fake-audio-capture={microphone}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(server.url)
        yield driver
    finally:
        driver.quit()
        server.stop()


def finished_results(driver, count, timeout=60):
    """The page's result cards once `count` of them are done or failed (newest first)."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cards = driver.find_elements(By.CSS_SELECTOR, ".result")
        if len(cards) >= count and all(card.get_attribute("data-state") != "pending" for card in cards):
            return cards
        time.sleep(0.1)
    raise AssertionError(f"the page did not show {count} finished transcripts in {timeout} s: "
                         f"{[card.text for card in driver.find_elements(By.CSS_SELECTOR, '.result')]}")


def test_the_page_uploads_files_and_shows_each_transcript_with_word_times(browser, digits_model, spoken, fsdd_dir):
    from selenium.webdriver.common.by import By

    assert browser.find_element(By.ID, "model-name").text == "digits"
    unheard = fsdd_dir / "0_george_0.wav"  # a take the model never heard: its words may come with low confidence
    browser.find_element(By.ID, "files").send_keys("\n".join([str(unheard)] + [u.audio for u in spoken[:2]]))
    cards = finished_results(browser, 3)
    by_name = {card.find_element(By.CSS_SELECTOR, ".name").text: card for card in cards}
    model = asr.load_model(digits_model.model)
    # Words under 60% confidence are marked, the others not.
    for chip in by_name[unheard.name].find_elements(By.CSS_SELECTOR, ".word"):
        confidence = int(chip.find_element(By.CSS_SELECTOR, ".t").text.split("· ")[1].rstrip("%"))
        assert ("low" in chip.get_attribute("class").split()) == (confidence < 60)
    for utterance in spoken[:2]:
        card = by_name[os.path.basename(utterance.audio)]
        assert card.get_attribute("data-state") == "done"
        assert card.find_element(By.CSS_SELECTOR, ".transcript").text == utterance.text
        offline = transcribe_file(model, utterance.audio)
        chips = card.find_elements(By.CSS_SELECTOR, ".word")
        assert [chip.find_element(By.CSS_SELECTOR, ".w").text for chip in chips] == utterance.text.split()
        times = [chip.find_element(By.CSS_SELECTOR, ".t").text for chip in chips]
        assert times == [f"{w.start:.2f}–{w.end:.2f} s · {round(w.confidence * 100)}%" for w in offline.words]
        # The SRT the page makes from the server's segments is the library's.
        link = card.find_element(By.LINK_TEXT, "srt")
        assert link.get_attribute("download") == os.path.basename(utterance.audio).replace(".wav", ".srt")
        srt = browser.execute_async_script(
            "const done = arguments[arguments.length - 1]; fetch(arguments[0]).then(r => r.text()).then(done);",
            link.get_attribute("href"))
        assert srt.strip() == format_srt(offline).strip()


def test_the_page_records_the_microphone_and_shows_the_digit(browser, spoken):
    from selenium.webdriver.common.by import By

    before = len(browser.find_elements(By.CSS_SELECTOR, ".result"))
    record = browser.find_element(By.ID, "record")
    record.click()
    deadline = time.monotonic() + 10
    while "Stop" not in record.text:
        assert time.monotonic() < deadline, browser.find_element(By.ID, "record-status").text
        time.sleep(0.05)
    time.sleep(2.0)  # the fake microphone's file: 0.6 s, the digit (under a second), 2 s
    record.click()
    card = finished_results(browser, before + 1)[0]  # the newest card comes first
    assert card.find_element(By.CSS_SELECTOR, ".name").text.startswith("recording-")
    assert card.get_attribute("data-state") == "done", card.text
    assert card.find_element(By.CSS_SELECTOR, ".transcript").text == spoken[2].text


def test_the_page_draws_the_posteriorgram_when_asked(browser, spoken):
    from selenium.webdriver.common.by import By

    before = len(browser.find_elements(By.CSS_SELECTOR, ".result"))
    # Not asked for, no picture: the cards so far have none.
    assert all(not figure.is_displayed() for figure in browser.find_elements(By.CSS_SELECTOR, ".plot"))
    checkbox = browser.find_element(By.ID, "plot")
    assert checkbox.is_displayed() and not checkbox.is_selected()
    checkbox.click()
    browser.find_element(By.ID, "files").send_keys(spoken[0].audio)
    card = finished_results(browser, before + 1)[0]
    figure = card.find_element(By.CSS_SELECTOR, ".plot")
    deadline = time.monotonic() + 60
    while figure.get_attribute("data-state") == "pending":
        assert time.monotonic() < deadline, "the picture did not come within 60 s"
        time.sleep(0.1)
    assert figure.get_attribute("data-state") == "done", figure.text
    image = figure.find_element(By.TAG_NAME, "img")
    # The server's PNG, decoded by the browser: asr.plot draws a 30-s recording or less 800 pixels wide, or more.
    assert browser.execute_script("return arguments[0].naturalWidth", image) >= 800
    assert image.is_displayed() and image.size["width"] > 0
    assert card.find_element(By.LINK_TEXT, "png").get_attribute("download") == \
        os.path.basename(spoken[0].audio).replace(".wav", ".png")
    if os.environ.get("ASR_SERVE_SCREENSHOT"):
        browser.set_window_size(1000, 1600)  # the newest transcript and its whole picture
        browser.save_screenshot(os.environ["ASR_SERVE_SCREENSHOT"])
        browser.set_window_size(1000, 1000)
    checkbox.click()  # off again, for the tests that follow
