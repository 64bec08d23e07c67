"""The Gradio Space (`space/app.py`), launched as `python space/app.py` on 127.0.0.1 with a tiny random model.

Driven through `gradio_client` (the named `/upscale` API, concurrency, bad uploads) and a real headless Chromium
(Debian's `/usr/bin/chromium` driven by playwright; nothing is downloaded). The browser test keeps a screenshot in
`test-artifacts/space.png`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from gradio_client.utils import QueueError
from PIL import ExifTags

from .conftest import icc_profile, make_tiny_pipeline, random_photo

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "space" / "app.py"
EXAMPLES = sorted((REPO / "space" / "examples").glob("*.png"))
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MAX_INPUT_PIXELS = 200 * 200  # the app is started with this input limit
STARTUP_TIMEOUT_S = 240.0


@dataclass
class RunningSpace:
    url: str
    process: subprocess.Popen
    log: Path

    def assert_alive(self) -> None:
        assert self.process.poll() is None, f"the app exited:\n{self.log.read_text()[-4000:]}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(space: RunningSpace, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        space.assert_alive()
        try:
            with urllib.request.urlopen(space.url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the app did not answer within {timeout_s:.0f} s:\n{space.log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSpace]:
    root = tmp_path_factory.mktemp("space")
    # 4x4 patches keep the tiny model fast on CPU; the tile default comes from the model's config as in teasr-mini.
    pipe = make_tiny_pipeline(patch_size=4, in_channels=48)
    pipe.register_to_config(default_tile_size=128)
    pipe.save_pretrained(root / "model")
    (root / "tmp").mkdir()
    port = free_port()
    env = {
        **os.environ,
        "TEASR_MODEL": str(root / "model"),
        "TEASR_SPACE_MAX_INPUT_PIXELS": str(MAX_INPUT_PIXELS),
        "TEASR_SPACE_CONCURRENCY": "2",
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(root / "gradio"),
        "HF_HUB_OFFLINE": "1",
        "TMPDIR": str(root / "tmp"),
        "PYTHONUNBUFFERED": "1",
    }
    log = root / "app.log"
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, str(APP)], cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    running = RunningSpace(url=f"http://127.0.0.1:{port}/", process=process, log=log)
    try:
        wait_until_serving(running, STARTUP_TIMEOUT_S)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def client(space: RunningSpace) -> Client:
    return Client(space.url, verbose=False)


def photo(folder: Path, name: str, height: int, width: int, seed: int = 0) -> str:
    path = folder / name
    random_photo(height, width, seed=seed).save(path)
    return str(path)


def test_upscale_api_signature_and_result(client: Client, tmp_path: Path) -> None:
    endpoint = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/upscale"]
    names = [parameter["parameter_name"] for parameter in endpoint["parameters"]]
    assert names == ["image", "steps", "scale", "start_timestep", "seed", "start"]
    assert len(endpoint["returns"]) == 1

    source = photo(tmp_path, "small.png", 24, 40)
    result = client.predict(handle_file(source), 2, 2, 1.0, 7, api_name="/upscale")
    with PIL.Image.open(result) as image:
        assert image.format == "PNG"
        assert image.size == (80, 48)
        first = image.convert("RGB").tobytes()
    again = client.predict(handle_file(source), 2, 2, 1.0, 7, api_name="/upscale")
    other_seed = client.predict(handle_file(source), 2, 2, 1.0, 8, api_name="/upscale")
    with PIL.Image.open(again) as same, PIL.Image.open(other_seed) as different:
        assert same.convert("RGB").tobytes() == first, "the same seed must give the same image"
        assert different.convert("RGB").tobytes() != first, "another seed must give another image"
    # The LQ start has no noise: the seed plays no part, and it is not the noise start's image.
    from_lq = [client.predict(handle_file(source), 2, 2, 1.0, seed, "lq", api_name="/upscale") for seed in (7, 8)]
    with PIL.Image.open(from_lq[0]) as one, PIL.Image.open(from_lq[1]) as two:
        assert one.convert("RGB").tobytes() == two.convert("RGB").tobytes() != first


def test_four_concurrent_calls(client: Client, tmp_path: Path) -> None:
    scales = [1, 1.5, 2, 3]
    sources = [photo(tmp_path, f"in{i}.png", 16, 20 + 4 * i, seed=i) for i in range(len(scales))]
    arguments = [(handle_file(source), 1 + i, scale, 0.8, i) for i, (source, scale) in enumerate(zip(sources, scales))]
    jobs = [client.submit(*args, api_name="/upscale") for args in arguments]
    results = [job.result(timeout=300) for job in jobs]
    for i, (result, args) in enumerate(zip(results, arguments)):
        alone = client.predict(*args, api_name="/upscale")
        with PIL.Image.open(result) as image, PIL.Image.open(alone) as reference:
            assert image.size == (round((20 + 4 * i) * scales[i]), round(16 * scales[i])), (i, image.size)
            assert image.tobytes() == reference.tobytes(), f"concurrent call {i} differs from the same call alone"


def app_max_queue() -> int:
    """The queue bound the fixture's app runs with: TEASR_SPACE_MAX_QUEUE if set, else space/app.py's default."""
    default = re.search(r'env_int\("TEASR_SPACE_MAX_QUEUE", (\d+)\)', APP.read_text())
    assert default, "space/app.py no longer reads TEASR_SPACE_MAX_QUEUE through env_int"
    return int(os.environ.get("TEASR_SPACE_MAX_QUEUE") or default.group(1))


def test_sixteen_concurrent_calls_all_complete_or_queue_politely(
    space: RunningSpace, client: Client, tmp_path: Path
) -> None:
    burst = 16
    max_queue = app_max_queue()
    sources = [photo(tmp_path, f"burst{i}.png", 12 + i % 4, 16 + i, seed=i) for i in range(burst)]
    jobs = [
        client.submit(handle_file(source), 1 + i % 4, 2, 1.0, i, api_name="/upscale")
        for i, source in enumerate(sources)
    ]
    done, turned_away = 0, []
    for i, job in enumerate(jobs):
        try:
            result = job.result(timeout=300)
        except QueueError as error:  # the only acceptable failure: a polite "queue is full"
            assert "queue is full" in str(error).lower(), (i, str(error))
            turned_away.append(i)
            continue
        with PIL.Image.open(result) as image:
            image.load()
            assert (image.format, image.size) == ("PNG", (2 * (16 + i), 2 * (12 + i % 4))), (i, image.size)
        done += 1
    # Waiting requests never exceed the burst, so with the default bound (16) nobody may be turned away.
    if max_queue >= burst:
        assert turned_away == [], f"queue bound {max_queue} turned away requests {turned_away}"
    assert done + len(turned_away) == burst and done >= 1
    space.assert_alive()
    result = client.predict(handle_file(sources[0]), 1, 2, 1.0, 0, api_name="/upscale")
    with PIL.Image.open(result) as image:
        assert image.size == (32, 24)


def test_bad_inputs_are_rejected_friendly_and_the_app_lives_on(
    space: RunningSpace, client: Client, tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"this is plain text, not a PNG\n" * 10)
    with pytest.raises(AppError) as caught:
        client.predict(handle_file(str(corrupt)), 1, 2, 1.0, 0, api_name="/upscale")
    message = str(caught.value)
    assert "cannot read image corrupt.png" in message
    assert str(tmp_path) not in message and "/gradio" not in message, "server paths must not leak"

    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    with pytest.raises(AppError, match=r"notes\.txt: \.txt files are not supported"):
        client.predict(handle_file(str(text_file)), 1, 2, 1.0, 0, api_name="/upscale")

    too_big = photo(tmp_path, "big.png", 250, 250)
    with pytest.raises(AppError, match=r"above the input limit of 40,000 pixels: downscale it first, e.g. to 200x200"):
        client.predict(handle_file(too_big), 1, 2, 1.0, 0, api_name="/upscale")

    small = photo(tmp_path, "ok.png", 16, 16)
    with pytest.raises(AppError, match=r"Steps must be a whole number from 1 to 8"):
        client.predict(handle_file(small), 9, 2, 1.0, 0, api_name="/upscale")
    with pytest.raises(AppError, match=r"Start timestep must lie in \(0, 1\]"):
        client.predict(handle_file(small), 1, 2, 0.0, 0, api_name="/upscale")

    space.assert_alive()
    result = client.predict(handle_file(small), 1, 2, 1.0, 0, api_name="/upscale")
    with PIL.Image.open(result) as image:
        assert image.size == (32, 32)


def test_alpha_16_bit_cmyk_and_wide_gamut_inputs_come_back_as_png(client: Client, tmp_path: Path) -> None:
    # name: (mode, ICC profile's colour space, output mode, whether the output carries the input's profile)
    cases = {
        "rgba.png": ("RGBA", None, "RGBA", False),
        "gray16.png": ("I;16", None, "I;16", False),
        "cmyk.jpg": ("CMYK", "CMYK", "RGB", False),  # a CMYK profile does not describe the RGB output
        "p3.jpg": ("RGB", "RGB", "RGB", True),
        "palette.png": ("P", None, "RGB", False),  # full colour, not the upscale re-quantised to 256 colours
        "bilevel.png": ("1", None, "L", False),  # grey, not dithered black and white
    }
    for name, (mode, space, expected_mode, keeps_profile) in cases.items():
        path = tmp_path / name
        exif = PIL.Image.Exif()
        exif[ExifTags.Base.Make] = "TestCam"
        metadata = {"icc_profile": icc_profile(space)} if space else {}
        random_photo(12, 10, mode=mode).save(path, exif=exif, **metadata)
        result = client.predict(handle_file(str(path)), 1, 2, 1.0, 0, api_name="/upscale")
        with PIL.Image.open(result) as image:
            assert (image.format, image.mode, image.size) == ("PNG", expected_mode, (20, 24)), name
            assert image.info.get("icc_profile") == (icc_profile(space) if keeps_profile else None), name
            assert not image.getexif(), f"{name}: camera or GPS data must not leave the Space"


def test_compare_steps_api(client: Client, tmp_path: Path) -> None:
    source = photo(tmp_path, "cmp.png", 12, 16)
    gallery, table, *_ = client.predict(handle_file(source), 2, 1.0, 3, 0, api_name="/compare_steps")
    assert [item["caption"].split(" · ")[0] for item in gallery] == ["1 step", "2 steps", "4 steps", "8 steps"]
    for item in gallery:
        with PIL.Image.open(item["image"]) as image:
            assert image.size == (32, 24)
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [int(row.split("|")[2]) for row in rows] == [1, 2, 4, 8], table  # NFE column: one call per step


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium")
def test_browser_upload_run_and_see_the_result(space: RunningSpace) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
            page.goto(space.url)
            expect(page.locator("#run")).to_be_visible(timeout=60_000)
            page.locator("#input-image input[type=file]").set_input_files(str(EXAMPLES[0]))
            expect(page.locator("#input-image img")).to_be_visible(timeout=30_000)
            scale = page.locator("#scale input[type=number]")
            scale.fill("2")
            scale.press("Enter")

            page.locator("#run").click()
            info = page.locator("#result-info")
            expect(info).to_contain_text("NFE", timeout=120_000)
            assert "256×256 from 128×128" in info.inner_text()
            slider_images = page.locator("#result-slider img")
            expect(slider_images.first).to_be_visible()
            assert slider_images.count() >= 2, "the slider shows the input and the result"

            with page.expect_download() as download_info:
                page.locator("#download").click()
            downloaded = Path(download_info.value.path())
            with PIL.Image.open(downloaded) as image:
                assert image.format == "PNG" and image.size == (256, 256)
            page.screenshot(path=str(ARTIFACTS / "space.png"), full_page=True)
        finally:
            browser.close()
    space.assert_alive()


# (button, where its result appears, where its text appears, images a result shows, the same run through the API)
RUNS = {
    "upscale": ("#run", "#result-slider", "#result-info", 2, lambda photo: (photo, 1, 4, 1.0, 0, "/upscale")),
    "compare": (
        "#compare",
        "#compare-gallery",
        "#compare-info",
        4,
        lambda photo: (photo, 4, 1.0, 0, 128, "/compare_steps"),
    ),
}


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium")
@pytest.mark.parametrize("run", RUNS)
def test_a_new_photo_during_a_run_never_gets_the_old_result_and_can_be_run_at_once(
    space: RunningSpace, client: Client, tmp_path: Path, run: str
) -> None:
    from playwright.sync_api import expect, sync_playwright

    button, result, text, image_count, api_call = RUNS[run]
    first = photo(tmp_path, "first.png", 64, 64, seed=1)  # 256×256 at the page's x4
    second = photo(tmp_path, "second.png", 48, 64, seed=2)  # 256×192
    *inputs, api_name = api_call(handle_file(first))
    started = time.monotonic()
    client.predict(*inputs, api_name=api_name)  # as long as the page's run of the first photo takes
    first_run_s = time.monotonic() - started
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(space.url)
            expect(page.locator("#compare")).to_be_visible(timeout=60_000)
            shown, info = page.locator(result), page.locator(text)
            working = shown.locator(".eta-bar, .progress-text, .loader").first
            upload = page.locator("#input-image input[type=file]")

            def start_first_run_then_upload_the_second_photo() -> float:
                upload.set_input_files(first)
                expect(page.locator("#input-image img")).to_be_visible(timeout=30_000)
                page.locator(button).click()
                clicked = time.monotonic()
                expect(working).to_be_visible(timeout=30_000)
                upload.set_input_files(second)  # while the first photo's run is working
                return clicked

            clicked = start_first_run_then_upload_the_second_photo()
            page.wait_for_timeout(max(0.0, clicked + 2 * first_run_s + 2 - time.monotonic()) * 1000)
            # The first run has ended by now: its results must not appear beside the second photo.
            assert shown.locator("img").count() == 0 and "NFE" not in info.inner_text()

            start_first_run_then_upload_the_second_photo()
            page.locator(button).click()  # queued behind the first run, not swallowed by it
            expect(info).to_contain_text("256×192", timeout=120_000)
            expect(shown.locator("img")).to_have_count(image_count)
        finally:
            browser.close()
    space.assert_alive()


def test_build_demo_accepts_a_pipeline_in_process(tiny_pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("teasr_space_app", APP)
    app = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, app)
    spec.loader.exec_module(app)
    demo = app.build_demo(tiny_pipeline)
    endpoints = {fn.api_name: fn for fn in demo.fns.values()}
    upscale = endpoints["upscale"]
    assert [block.label for block in upscale.inputs] == [
        "Low-quality input",
        "Steps",
        "Upscale factor",
        "Start timestep T",
        "Seed",
        "Start from",
    ]
    assert upscale.api_visibility == "public" and endpoints["compare_steps"].api_visibility == "public"
    # Every model-calling event shares one bounded concurrency group; the queue is bounded too.
    runs = ("upscale", "upscale_ui", "compare_steps", "compare_ui")
    assert {endpoints[name].concurrency_id for name in runs} == {"teasr"}
    assert endpoints["upscale_ui"].api_visibility == endpoints["compare_ui"].api_visibility == "undocumented"
    assert demo._queue.default_concurrency_limit == app.CONCURRENCY
    assert demo._queue.max_size == app.MAX_QUEUE


def test_start_slider_holds_the_embedded_models_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline_teasr import TEASRPipeline
    from pipeline_teasr.hub import default_model_path

    spec = importlib.util.spec_from_file_location("teasr_space_app", APP)
    app = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, app)
    spec.loader.exec_module(app)
    pipe = TEASRPipeline.from_pretrained(default_model_path())
    demo = app.build_demo(pipe)
    start = next(block for block in demo.blocks.values() if getattr(block, "label", None) == "Start timestep T")
    assert start.value == pipe.config.default_start_timestep
    start_from = next(block for block in demo.blocks.values() if getattr(block, "label", None) == "Start from")
    assert start_from.value == (pipe.config.get("default_start") or "noise")
    assert start.minimum <= start.value <= start.maximum
    offered = [value for _, value in start_from.choices]
    assert offered == [value for _, value in app.START_CHOICES if value in pipe.supported_starts]
    # teasr-mini starts from the LQ image only: no noise, so no seed and no choice of start are shown
    seed = next(block for block in demo.blocks.values() if getattr(block, "label", None) == "Seed")
    assert pipe.supported_starts == ("lq",) and not seed.visible and not start_from.visible
    assert (
        "seed" not in next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "compare-gallery").label
    )


def test_settings_the_browser_cannot_hold_or_that_would_block_others_are_refused(monkeypatch) -> None:
    spec = importlib.util.spec_from_file_location("teasr_space_app", APP)
    app = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, app)
    spec.loader.exec_module(app)
    assert app.parse_settings(1, 4, 1.0, 2**32 - 1, 64).seed == 2**32 - 1  # compared exactly, not as a float
    with pytest.raises(app.gr.Error, match=r"Seed must be a whole number from 0 to 4294967295, got 4294967296"):
        app.parse_settings(1, 4, 1.0, 2**32, 64)
    small, large = PIL.Image.new("RGB", (128, 128)), PIL.Image.new("RGB", (129, 128))
    assert app.check_output_size(small, app.parse_settings(1, 4, 1.0, 0, 0)) == (512, 512)  # untiled: fine
    with pytest.raises(app.gr.Error, match=r"Tile size 0 \(off\) .* up to 262,144 pixels, and this one has 264,192"):
        app.check_output_size(large, app.parse_settings(1, 4, 1.0, 0, 0))
    assert app.check_output_size(large, app.parse_settings(1, 4, 1.0, 0, 64)) == (512, 516)  # tiled: fine


def test_the_page_names_the_model_without_the_servers_paths(tiny_pipeline, tmp_path, monkeypatch) -> None:
    from pipeline_teasr.hub import embedded_model_path

    spec = importlib.util.spec_from_file_location("teasr_space_app", APP)
    app = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, app)
    spec.loader.exec_module(app)
    (tmp_path / "my-model").mkdir()
    names, original = {}, tiny_pipeline.config.get("_name_or_path")
    try:
        for name_or_path in (str(embedded_model_path()), str(tmp_path / "my-model"), "someone/teasr-large"):
            tiny_pipeline.register_to_config(_name_or_path=name_or_path)
            names[name_or_path] = app.display_name(tiny_pipeline)
    finally:
        tiny_pipeline.register_to_config(_name_or_path=original)
    assert list(names.values()) == ["teasr-mini (embedded)", "my-model", "someone/teasr-large"]


def test_a_bad_space_setting_is_one_line_and_exit_2(tmp_path) -> None:
    env = {**os.environ, "TEASR_SPACE_MAX_INPUT_PIXELS": "abc", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(APP)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == "teasr space: TEASR_SPACE_MAX_INPUT_PIXELS='abc' is not an integer"
    assert "Traceback" not in result.stderr
