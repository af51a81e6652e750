"""The console in a real headless browser (Playwright driving Debian's chromium) against ``saft serve``.

One shared stack (the embedded ``saft serve``) and one browser. Each test has its own tenant (a key made in the
stack's store), its own browser context and page, and its own data, made through the API (or through the page,
where uploading or starting is what it tests); so any test runs alone and in any order. The tests that only read
a finished SAFT job share one (``finished``), made through the API the first time one asks for it and changed by
none. Screenshots of each page go to ``$SAFT_CONSOLE_SCREENSHOTS`` (default: a temporary folder, printed).

Skipped, saying why, only where no chromium is installed (``.ci/run`` installs it with apt) or Playwright is
missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.stack import Stack, render, stack_settings, tar_gz_dir, wait_for_job, zip_dir

pytestmark = [pytest.mark.service, pytest.mark.slow]

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
VIEWPORT = {"width": 1440, "height": 900}
# The method of the jobs the tests make through the API: SAFT at 1 %, as the new-job form sends it by default.
FORM_METHOD = {"type": "saft", "ratio": 0.01}
# Chromium logs every non-2xx fetch as a console error; the tests that provoke one expect exactly those.
EXPECTED_HTTP_ERROR = "Failed to load resource: the server responded with a status of"


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Session:
    """One test's browser context and page, signed in (or not) as its own tenant."""

    def __init__(self, stack: Stack, context: Any, shots: Path, key: str) -> None:
        self.stack = stack
        self.context = context
        self.page = context.new_page()
        self.page.set_default_timeout(30_000)
        self.shots = shots
        self.key = key
        self.errors: list[str] = []  # console errors and uncaught exceptions of the page
        watch(self.page, self.errors)

    def api(self) -> httpx.Client:
        return tenant_api(self.stack, self.key)

    def sign_in(self) -> None:
        """The tenant's key in the session storage before the console's scripts run, as after a sign-in."""
        self.context.add_init_script(
            f"if (location.origin === {json.dumps(self.stack.base_url)}) "
            f"sessionStorage.setItem('saft.apiKey', {json.dumps(self.key)});"
        )

    def shot(self, name: str) -> None:
        self.page.evaluate("window.scrollTo(0, 0)")  # the top bar is sticky: keep it at the top of the picture
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    def goto(self, fragment: str) -> None:
        self.page.goto(f"{self.stack.base_url}/console#{fragment}")

    def take_errors(self, allow_http_errors: bool = False) -> list[str]:
        errors = [e for e in self.errors if not (allow_http_errors and e.startswith(EXPECTED_HTTP_ERROR))]
        self.errors.clear()
        return errors


def tenant_api(stack: Stack, key: str) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def new_tenant(stack: Stack) -> str:
    """The key of a new tenant of ``stack``, made in its store (as ``saft keys create`` does): no data yet."""
    from saft_service import db, keys

    with db.session_scope(stack_settings(stack)) as s:
        _, key = keys.create_key(s, tenant_name=f"console-{secrets.token_hex(6)}")
    return key


def upload(c: httpx.Client, archive: Path, name: str) -> dict:
    r = c.post("/v1/datasets", files={"file": (archive.name, archive.read_bytes())}, data={"name": name})
    assert r.status_code == 201, r.text
    return r.json()


def start_job(c: httpx.Client, dataset_id: str, **body: Any) -> dict:
    r = c.post("/v1/jobs", json={"dataset_id": dataset_id, **body})
    assert r.status_code == 201, r.text
    return r.json()


def cancelled_job(c: httpx.Client, dataset_id: str) -> dict:
    """A job cancelled at once (cheap), ended."""
    job = start_job(c, dataset_id, hyperparameters={"epochs": 1000})
    c.post(f"/v1/jobs/{job['id']}/cancel")
    return wait_for_job(c, job["id"], until={"cancelled", "failed", "succeeded"}, timeout=120)


def watch(page: Any, sink: list[str]) -> None:
    page.on("console", lambda m: m.type == "error" and sink.append(m.text))
    page.on("pageerror", lambda e: sink.append(f"uncaught: {e}"))


if chromium_path() is None:  # checked before any fixture starts a stack
    pytest.skip(
        "no chromium on this machine: `apt-get install chromium` (.ci/run does it) to run the console tests",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium_path()
    assert path is not None
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("SAFT_CONSOLE_SCREENSHOTS") or tmp_path_factory.mktemp("console-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"console screenshots in {folder}")
    return folder


@pytest.fixture
def console(browser: Any, embedded_stack: Stack, shots: Path) -> Iterator[Session]:
    """A new tenant and a fresh browser context on its console, not signed in."""
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    try:
        yield Session(embedded_stack, context, shots, new_tenant(embedded_stack))
    finally:
        context.close()


@pytest.fixture
def ui(console: Session) -> Session:
    """``console``, signed in as its tenant."""
    console.sign_in()
    return console


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("console-data")
    train = render(root / "shapes", per_class=8, seed=0)
    shifted = render(root / "shifted", per_class=4, seed=5)
    (root / "shapes.zip").write_bytes(zip_dir(train, wrap="shapes"))
    (root / "shifted.tar.gz").write_bytes(tar_gz_dir(shifted))
    (root / "broken.zip").write_bytes(b"this is not a zip archive")
    return {"train": root / "shapes.zip", "eval": root / "shifted.tar.gz", "broken": root / "broken.zip",
            "image": next((train / "red_circle").iterdir())}


@dataclass(frozen=True)
class Finished:
    """A tenant with a SAFT job that succeeded (validation split and a shifted set: a frontier), for the tests
    that only read it."""

    key: str
    train: str  # dataset ids
    eval: str
    job: str


@pytest.fixture(scope="module")
def finished(embedded_stack: Stack, archives: dict[str, Path]) -> Finished:
    key = new_tenant(embedded_stack)
    with tenant_api(embedded_stack, key) as c:
        train, shifted = upload(c, archives["train"], "shapes"), upload(c, archives["eval"], "shifted")
        job = start_job(c, train["id"], method=FORM_METHOD, eval_dataset_ids=[shifted["id"]],
                        validation_fraction=0.25, hyperparameters={"epochs": 4, "batch_size": 3, "learning_rate": 0.002})
        job = wait_for_job(c, job["id"], until={"succeeded", "failed", "cancelled"}, timeout=300)
    assert job["status"] == "succeeded", f"{job}\n{embedded_stack.logs()}"
    return Finished(key, train["id"], shifted["id"], job["id"])


@pytest.fixture
def reader(console: Session, finished: Finished) -> Session:
    """A page signed in as ``finished``'s tenant."""
    console.key = finished.key
    console.sign_in()
    return console


def test_root_redirects_and_a_wrong_key_is_refused_with_the_apis_message(console: Session) -> None:
    ui = console
    page = ui.page
    assert f"Console: {ui.stack.base_url}/console" in ui.stack.procs[0].lines  # what `make run` prints
    page.goto(ui.stack.base_url + "/")
    assert page.url == f"{ui.stack.base_url}/console"
    page.fill("#key", "saft_not-a-real-key")
    page.click("text=Sign in >> nth=-1")
    problem = page.locator(".signin .problem")
    sync_api.expect(problem).to_contain_text("the API key is unknown or revoked")  # the API's detail
    ui.shot("01-sign-in-refused")
    page.fill("#key", ui.key)
    page.click("text=Sign in >> nth=-1")
    sync_api.expect(page.locator("#nav")).to_be_visible()
    sync_api.expect(page.locator(".empty")).to_contain_text("No jobs yet")
    assert page.evaluate("sessionStorage.getItem('saft.apiKey')") == ui.key
    assert ui.take_errors(allow_http_errors=True) == []


def test_a_bad_archive_shows_the_apis_problem(ui: Session, archives: dict[str, Path]) -> None:
    page = ui.page
    ui.goto("/datasets")
    page.set_input_files("#file", str(archives["broken"]))
    page.click("#upload-btn")
    problem = page.locator("#upload-msg .problem")
    sync_api.expect(problem).to_be_visible()
    with ui.api() as c:  # the same bytes sent straight to the API: the page shows its detail and code
        answer = c.post("/v1/datasets", files={"file": ("broken.zip", archives["broken"].read_bytes())},
                        data={"name": "broken"}).json()
        assert c.get("/v1/datasets").json()["data"] == []  # nothing was stored
    sync_api.expect(problem).to_contain_text(answer["detail"])
    sync_api.expect(problem).to_contain_text(answer["code"])
    ui.shot("02-upload-refused")
    assert ui.take_errors(allow_http_errors=True) == []


def test_upload_datasets_and_see_counts_and_thumbnails(ui: Session, archives: dict[str, Path]) -> None:
    page = ui.page
    ui.goto("/datasets")
    for key, name in (("train", "shapes"), ("eval", "shifted")):
        page.set_input_files("#file", str(archives[key]))
        sync_api.expect(page.locator("#ds-name")).to_have_value(name)
        page.click("#upload-btn")
        sync_api.expect(page.locator("#datasets-table tr", has_text=name)).to_be_visible()
        sync_api.expect(page.locator("#upload-progress .label")).to_contain_text(f"uploaded {name}")
        assert page.eval_on_selector("#upload-progress .bar", "b => b.style.width") == "100%"
    with ui.api() as c:
        listed = {d["name"]: d for d in c.get("/v1/datasets").json()["data"]}
    assert sorted(listed) == ["shapes", "shifted"]
    row = page.locator("#datasets-table tr", has_text="shapes")
    sync_api.expect(row).to_contain_text(str(listed["shapes"]["num_images"]))
    ui.shot("03-datasets")
    row.locator("a", has_text="shapes").click()
    counts = listed["shapes"]["counts"]
    thumbs = page.locator("#thumbs img")
    sync_api.expect(thumbs).to_have_count(sum(min(n, 6) for n in counts.values()))
    page.wait_for_function("[...document.querySelectorAll('#thumbs img')].every(i => i.complete && i.naturalWidth > 0)")
    chart = page.evaluate("Chart.getChart('counts').data.datasets[0].data")
    assert chart == [counts[c] for c in listed["shapes"]["classes"]]
    ui.shot("04-dataset")
    assert ui.take_errors() == []


def test_an_invalid_job_request_shows_the_apis_messages_next_to_the_fields(
    ui: Session, archives: dict[str, Path]
) -> None:
    page = ui.page
    with ui.api() as c:
        train = upload(c, archives["train"], "shapes")
    ui.goto(f"/new?dataset={train['id']}")
    # A client-side check: no request is sent.
    page.fill('[name="method.ratio"]', "2")
    page.click("#submit")
    sync_api.expect(page.locator('[data-error-for="method.ratio"]')).to_have_text("must be less than 1")
    page.fill('[name="method.ratio"]', "0.01")
    # One only the API knows: a template without the class placeholder.
    page.click("text=Prompt templates")
    page.fill('[name="templates"]', "a picture")
    page.click("#submit")
    error = page.locator('[data-error-for="templates"]')
    sync_api.expect(error).to_contain_text("must contain exactly one '{}'")
    with ui.api() as c:
        answer = c.post("/v1/jobs", json={"dataset_id": train["id"], "templates": ["a picture"]}).json()
    assert answer["code"] == "validation_error"
    assert answer["errors"][0]["msg"] == error.inner_text()  # the API's own words, plain ones
    sync_api.expect(page.locator("#form-problem .problem")).to_contain_text(answer["detail"])
    assert "Value error" not in page.locator("#form-problem").inner_text()
    ui.shot("05-new-job-invalid")
    assert ui.take_errors(allow_http_errors=True) == []


def test_a_saft_job_runs_live_to_succeeded(ui: Session, archives: dict[str, Path]) -> None:
    page = ui.page
    with ui.api() as c:
        train, shifted = upload(c, archives["train"], "shapes"), upload(c, archives["eval"], "shifted")
    ui.goto(f"/new?dataset={train['id']}")
    sync_api.expect(page.locator('[name="validation_fraction"]')).to_have_value("0.2")  # the frontier, by default
    page.check(f'[name="eval"][value="{shifted["id"]}"]')
    page.fill('[name="validation_fraction"]', "0.25")
    # 96 training steps: a few seconds even on an idle machine, so the page (which reads the job once a second)
    # sees it part-way (12 steps were over before the first read there).
    page.fill('[name="hyperparameters.epochs"]', "16")
    page.fill('[name="hyperparameters.batch_size"]', "3")
    page.fill('[name="hyperparameters.learning_rate"]', "0.002")
    ui.shot("05-new-job")
    page.click("#submit")
    page.wait_for_url("**/console#/jobs/job_*")
    page.wait_for_selector("#progress .bar")
    # Sample what the page shows while the job runs: the bar's width, the curve's points, the status.
    samples: list[tuple[float, int, str]] = []
    deadline = time.monotonic() + 240
    shot_taken = False
    while time.monotonic() < deadline:
        width, points, status, step_text = page.evaluate("""() => [
            parseFloat(document.querySelector('#progress .bar').style.width) || 0,
            Chart.getChart('loss-chart').data.datasets[0].data.length,
            document.querySelector('#status .badge')?.textContent,
            document.querySelector('#step-text').textContent]""")
        samples.append((width, points, status))
        assert " of 0" not in step_text, step_text  # a stage with no step count yet is shown busy
        if status == "running" and points >= 2 and not shot_taken:
            ui.shot("06-job-running")
            shot_taken = True
        if status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.15)
    assert samples[-1][2] == "succeeded", samples[-12:]
    running = [s for s in samples if s[2] == "running"]
    assert any(0 < w < 100 for w, _, _ in running), "the progress bar never showed a partial step"
    # The curve grew while the page watched (from the polled job row and the stream's progress events).
    assert samples[-1][1] >= 2 and samples[-1][1] > min(p for _, p, _ in running), samples
    sync_api.expect(page.locator("#progress .label")).to_have_text("done")
    log = page.locator("#log")
    sync_api.expect(log).to_contain_text("job succeeded")
    assert "stage training" in log.inner_text()
    assert ui.take_errors() == []


def test_mask_chart_and_the_frontier_show_the_apis_numbers(reader: Session, finished: Finished) -> None:
    ui, page, job_id = reader, reader.page, finished.job
    ui.goto(f"/jobs/{job_id}")
    with ui.api() as c:
        mask = c.get(f"/v1/jobs/{job_id}/mask").json()
        body = c.get(f"/v1/jobs/{job_id}/evaluations").json()
    evals, rec = body["data"], body["recommended_alpha"]
    sync_api.expect(page.locator("#mask [data-k]")).to_have_attribute("data-k", str(mask["k"]))
    charted = page.evaluate("""() => ['mask-image', 'mask-text'].map(id =>
        Chart.getChart(id).data.datasets.flatMap(d => d.data).reduce((a, b) => a + b, 0))""")
    image = sum(t["selected"] for t in mask["tensors"] if t["name"].startswith("visual."))
    assert charted == [image, mask["k"] - image]
    assert mask["k"] > 0
    # the frontier: a line per set through every alpha of the API's rows, then the recommended alpha's marker
    assert rec is not None  # the job has a validation split
    page.wait_for_function("() => Chart.getChart('frontier-chart') !== undefined")  # drawn once its rows came
    lines = page.evaluate("Chart.getChart('frontier-chart').data.datasets.map(d => [d.label, d.data])")
    sets = list(dict.fromkeys(e["dataset_name"] for e in evals))
    assert set(sets) == {"validation", "shifted"}
    assert [label for label, _ in lines] == [*sets, f"recommended α = {rec:g}"]
    for name, points in lines[:-1]:
        rows = [e for e in evals if e["dataset_name"] == name]
        assert [p["x"] for p in points] == [e["alpha"] for e in rows] and len(rows) == 5
        assert [p["y"] for p in points] == pytest.approx([e["top1"] * 100 for e in rows])
    assert {p["x"] for p in lines[-1][1]} == {rec}
    sync_api.expect(page.locator("#recommended-alpha")).to_have_text(f"{rec:g}")
    for name in sets:
        row = page.locator(f'#eval-table tr:has-text("{name}")')
        for alpha in (0.0, 1.0, rec):
            top1 = next(e["top1"] for e in evals if e["dataset_name"] == name and e["alpha"] == alpha)
            sync_api.expect(row).to_contain_text(f"{top1 * 100:.1f} %")
    ui.shot("07-job-succeeded")
    page.locator("#evaluations").screenshot(path=str(ui.shots / "07-frontier.png"))
    assert ui.take_errors() == []


def test_classify_base_and_fine_tuned_side_by_side(
    reader: Session, finished: Finished, archives: dict[str, Path]
) -> None:
    ui, page = reader, reader.page
    ui.goto(f"/jobs/{finished.job}")
    page.set_input_files("#try-file", str(archives["image"]))
    sync_api.expect(page.locator("#pred-tuned li")).to_have_count(3)  # 3 classes, top_k 5
    sync_api.expect(page.locator("#pred-base li")).to_have_count(3)
    with ui.api() as c:
        def top(alpha: float) -> dict:
            files = {"images": (archives["image"].name, archives["image"].read_bytes(), "image/png")}
            data = {"job_id": finished.job, "alpha": str(alpha), "top_k": "5"}
            return c.post("/v1/classify", files=files, data=data).json()["results"][0]["predictions"][0]
        tuned, base = top(1.0), top(0.0)
    first_tuned = page.locator("#pred-tuned li").first
    sync_api.expect(first_tuned).to_contain_text(tuned["label"])
    sync_api.expect(first_tuned).to_contain_text(f"{tuned['score'] * 100:.1f} %")
    sync_api.expect(page.locator("#pred-base li").first).to_contain_text(f"{base['score'] * 100:.1f} %")
    # Every label whole (it wraps) and with its tooltip: no "green trian..."
    labels = page.eval_on_selector_all(".preds .bars .label", """els => els.map(e =>
        [e.textContent, e.title, e.scrollWidth <= e.clientWidth && e.scrollHeight <= e.clientHeight])""")
    assert len(labels) == 6 and all(text == title and whole for text, title, whole in labels), labels
    ui.shot("08-try-it")
    # The slider at 0 is the base model: the right column then equals the left one.
    page.eval_on_selector("#alpha", "el => { el.value = 0; el.dispatchEvent(new Event('input')); el.dispatchEvent(new Event('change')); }")
    sync_api.expect(page.locator("#tuned-title")).to_have_text("Interpolated (α = 0.00)")
    assert page.locator("#tuned-title").inner_text() == "Interpolated (α = 0.00)"  # as shown: no capital "A"
    sync_api.expect(page.locator("#pred-tuned li").first).to_contain_text(f"{base['score'] * 100:.1f} %")
    # The recommended alpha's button moves the slider there: the right column is the API's alpha=recommended.
    with ui.api() as c:
        files = {"images": (archives["image"].name, archives["image"].read_bytes(), "image/png")}
        answer = c.post("/v1/classify", files=files, data={"job_id": finished.job, "alpha": "recommended"}).json()
    page.click("#alpha-recommended")
    rec = answer["alpha"]
    sync_api.expect(page.locator("#alpha-out")).to_have_text(f"{rec:.2f}")
    title = "Fine-tuned" if rec == 1 else f"Interpolated (α = {rec:.2f})"
    sync_api.expect(page.locator("#tuned-title")).to_have_text(title)
    top = answer["results"][0]["predictions"][0]
    sync_api.expect(page.locator("#pred-tuned li").first).to_contain_text(f"{top['score'] * 100:.1f} %")
    assert ui.take_errors() == []


def test_download_the_checkpoint_and_its_sha256_matches(reader: Session, finished: Finished, tmp_path: Path) -> None:
    ui, page = reader, reader.page
    ui.goto(f"/jobs/{finished.job}")
    with ui.api() as c:
        expected = c.get(f"/v1/jobs/{finished.job}").json()["checkpoint"]["sha256"]
    row = page.locator('[data-download="checkpoint"]')
    sync_api.expect(row.locator("[data-sha]")).to_have_text(expected)
    with page.expect_download() as info:
        row.locator("button").click()
    target = tmp_path / "delta.safetensors"
    info.value.save_as(target)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == expected
    sync_api.expect(row.locator(".verified")).to_have_text("✓ verified")  # the page's own WebCrypto check
    assert ui.take_errors() == []


def test_jobs_list_filters_by_status_and_pages(ui: Session, archives: dict[str, Path]) -> None:
    page = ui.page
    with ui.api() as c:  # a short SAFT job that succeeds, then two cancelled at once (cheap) for a second page
        train = upload(c, archives["train"], "shapes")
        done = start_job(c, train["id"], method=FORM_METHOD, validation_fraction=0.25,
                         hyperparameters={"epochs": 1, "batch_size": 8})
        done = wait_for_job(c, done["id"], until={"succeeded", "failed", "cancelled"}, timeout=180)
        assert done["status"] == "succeeded", done
        for _ in range(2):
            cancelled_job(c, train["id"])
        tuned = [e["top1"] for e in c.get(f"/v1/jobs/{done['id']}/evaluations").json()["data"]
                 if e["model"] == "fine-tuned"]
    ui.goto("/jobs")
    row = page.locator(f'#jobs-table tr[data-id="{done["id"]}"]')
    sync_api.expect(row).to_contain_text("succeeded")
    sync_api.expect(row).to_contain_text("SAFT 1 %")
    sync_api.expect(row.locator(".best")).to_contain_text(f"{max(tuned) * 100:.1f} %")
    ui.shot("09-jobs")
    ui.goto("/jobs?size=2")  # pages of two: the newest two, then the first job alone
    rows = page.locator("#jobs-table tbody tr")
    sync_api.expect(rows).to_have_count(2)
    sync_api.expect(row).to_have_count(0)
    page.click("#next")
    sync_api.expect(rows).to_have_count(1)
    sync_api.expect(row).to_be_visible()
    assert page.locator("#next").count() == 0
    page.click("#prev")
    sync_api.expect(rows).to_have_count(2)
    page.select_option("#status-filter", "failed")
    sync_api.expect(page.locator(".empty")).to_contain_text("No failed jobs")
    page.select_option("#status-filter", "succeeded")
    sync_api.expect(rows).to_have_count(1)
    sync_api.expect(row).to_be_visible()
    assert ui.take_errors() == []


def test_a_second_tenant_sees_nothing_of_the_first(console: Session, finished: Finished) -> None:
    page, base = console.page, console.stack.base_url
    page.goto(f"{base}/console#/datasets")
    page.fill("#key", console.key)  # a tenant other than finished's
    page.click("text=Sign in >> nth=-1")
    sync_api.expect(page.locator(".empty")).to_contain_text("No datasets yet")
    page.goto(f"{base}/console#/jobs")
    sync_api.expect(page.locator(".empty")).to_contain_text("No jobs yet")
    page.goto(f"{base}/console#/jobs/{finished.job}")
    sync_api.expect(page.locator(".problem")).to_contain_text(f"no job {finished.job} in this tenant")
    page.goto(f"{base}/console#/datasets/{finished.train}")
    sync_api.expect(page.locator(".problem")).to_contain_text("in this tenant")
    assert console.take_errors(allow_http_errors=True) == []


def test_offline_the_console_and_the_docs_render_fully(
    browser: Any, embedded_stack: Stack, shots: Path, finished: Finished
) -> None:
    """Every request that does not go to the service is aborted (as on a machine without internet)."""
    context = browser.new_context(viewport=VIEWPORT)
    outside: list[str] = []
    base = embedded_stack.base_url

    def only_the_service(route: Any) -> None:
        if route.request.url.startswith(base + "/") or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", only_the_service)
    page = context.new_page()
    errors: list[str] = []
    watch(page, errors)
    try:
        page.goto(f"{base}/console#/jobs/{finished.job}")
        page.fill("#key", finished.key)
        page.click("text=Sign in >> nth=-1")
        sync_api.expect(page.locator("#eval-table")).to_be_visible()
        drawn = page.evaluate("""() => ['loss-chart', 'frontier-chart', 'mask-image', 'mask-text'].map(id =>
            Chart.getChart(id)?.getDatasetMeta(0).data.length || 0)""")
        assert all(n > 0 for n in drawn), drawn
        page.goto(f"{base}/docs")
        sync_api.expect(page.locator(".swagger-ui .opblock-summary-path", has_text="/v1/jobs/{job_id}/checkpoint")).to_be_visible()
        assert page.locator(".swagger-ui .opblock").count() >= 15
        sync_api.expect(page.locator(".swagger-ui .info .description ol > li")).to_have_count(5)  # the steps
        page.screenshot(path=str(shots / "10-docs-offline.png"))
    finally:
        context.close()
    assert outside == []
    assert errors == []


def test_delete_the_job_and_a_dataset(ui: Session, archives: dict[str, Path]) -> None:
    page = ui.page
    with ui.api() as c:
        train, shifted = upload(c, archives["train"], "shapes"), upload(c, archives["eval"], "shifted")
        kept, job = cancelled_job(c, train["id"]), cancelled_job(c, train["id"])
    page.on("dialog", lambda d: d.accept())  # the page asks before deleting
    ui.goto(f"/jobs/{job['id']}")
    page.click("#delete")
    page.wait_for_url("**/console#/jobs")
    sync_api.expect(page.locator("#jobs-table")).to_be_visible()
    sync_api.expect(page.locator(f'#jobs-table tr[data-id="{kept["id"]}"]')).to_be_visible()
    sync_api.expect(page.locator(f'#jobs-table tr[data-id="{job["id"]}"]')).to_have_count(0)
    ui.goto("/datasets")
    page.click(f'[data-delete="{shifted["id"]}"]')
    sync_api.expect(page.locator("#datasets-table tbody tr")).to_have_count(1)
    with ui.api() as c:
        assert c.get(f"/v1/jobs/{job['id']}").status_code == 404
        assert [d["id"] for d in c.get("/v1/datasets").json()["data"]] == [train["id"]]
    assert ui.take_errors() == []


# --- the edges a first hour finds (issue 19) -------------------------------------------------------------


@pytest.fixture
def own_datasets(ui: Session, archives: dict[str, Path]) -> list[dict]:
    """Three datasets of one name (as uploads of one folder are) in the test's tenant."""
    with ui.api() as c:
        return [upload(c, archives["train"], "shapes") for _ in range(3)]


def test_the_new_job_form_offers_every_model_and_tells_datasets_apart(ui: Session, own_datasets: list[dict]) -> None:
    page = ui.page
    with ui.api() as c:
        models = c.get("/v1/models").json()
    ui.goto("/new")
    sync_api.expect(page.locator('[name="validation_fraction"]')).to_have_value("0.2")
    # Three "shapes": each choice says its id, size and age.
    for d in own_datasets:
        choice = page.locator(f'label.eval-choice[title="{d["id"]}"]')
        when = page.evaluate("iso => new Date(iso).toLocaleString(undefined, {dateStyle: 'medium', timeStyle: 'short'})",
                             d["created_at"])
        for text in (d["name"], f"{d['id'][:11]}…", f"{d['num_images']} images", when):
            sync_api.expect(choice).to_contain_text(text)
    # Every model the API allows, grouped by where its weights are; the pretrained field offers the model's tags.
    options = dict(page.eval_on_selector_all('[name="model"] option', "os => os.map(o => [o.value, o.parentElement.label])"))
    assert sorted(options) == sorted(m["name"] for m in models["data"])
    assert options["saft-tiny"] == "Weights on this service"
    assert options["ViT-B-16"] == "Downloads its weights on first use"
    note = page.locator("#weights-note")
    sync_api.expect(note).to_have_attribute("data-where", "offline")
    page.select_option('[name="model"]', "ViT-B-16")
    sync_api.expect(note).to_have_attribute("data-where", "download")
    sync_api.expect(note).to_contain_text("downloads on first use")
    vit = next(m for m in models["data"] if m["name"] == "ViT-B-16")
    offered = page.eval_on_selector_all("#pretrained-list option", "os => os.map(o => o.value)")
    assert set(vit["pretrained"]) | {"default", "none"} <= set(offered), offered
    ui.shot("11-new-job-models")
    page.select_option('[name="model"]', "saft-tiny")
    page.fill('[name="pretrained"]', "mine.safetensors")  # a weights file the service's folder may hold
    sync_api.expect(note).to_have_attribute("data-where", "unknown")
    page.fill('[name="pretrained"]', "world")
    sync_api.expect(note).to_have_attribute("data-where", "offline")
    page.fill('[name="validation_fraction"]', "0")  # a user can still do without a validation split
    page.check(f'[name="eval"][value="{own_datasets[1]["id"]}"]')
    sent: list[dict] = []

    def capture(route: Any) -> None:  # what the form asks for, without starting a job
        sent.append(route.request.post_data_json)
        route.abort()

    page.route(f"{ui.stack.base_url}/v1/jobs", capture)
    try:
        page.click("#submit")
        sync_api.expect(page.locator("#form-problem .problem")).to_be_visible()
    finally:
        page.unroute(f"{ui.stack.base_url}/v1/jobs", capture)
    assert len(sent) == 1
    body = sent[0]
    assert (body["model"], body["pretrained"], body["validation_fraction"]) == ("saft-tiny", "world", 0)
    assert body["eval_dataset_ids"] == [own_datasets[1]["id"]]
    assert all("net::ERR_FAILED" in e for e in ui.take_errors()), "only the aborted request may fail"


def test_a_job_shows_what_its_events_say_when_its_row_lags_behind(ui: Session, own_datasets: list[dict]) -> None:
    """The page reads the job row each second and the events as they happen: either can be the newer. Here the
    row is held at what it was when the job was queued (its every read answers that), as if each read came just
    before the worker's write: the events say the job started, so the page must too."""
    page = ui.page
    with ui.api() as c:
        queued = c.post("/v1/jobs", json={"dataset_id": own_datasets[0]["id"], "validation_fraction": 0,
                                          "hyperparameters": {"epochs": 1000, "batch_size": 3}}).json()
    job_id = queued["id"]
    url = f"{ui.stack.base_url}/v1/jobs/{job_id}"  # the row only: events and their stream pass
    row = {"body": queued}

    def lagging(route: Any) -> None:
        route.fulfill(status=200, content_type="application/json", body=json.dumps(row["body"]))

    page.route(url, lagging)
    try:
        ui.goto(f"/jobs/{job_id}")
        sync_api.expect(page.locator("#status .badge")).to_have_text("running", timeout=60_000)
        sync_api.expect(page.locator("#step-text")).not_to_contain_text("waiting for a worker")
        # The row at the start of a stage: its step count is not known yet. Busy, not "step 0 of 0" at 0 %.
        with ui.api() as c:
            live = c.get(f"/v1/jobs/{job_id}").json()
        row["body"] = {**live, "status": "running", "stage": "scoring",
                       "progress": {"stage": "scoring", "step": 0, "total_steps": 0}}
        sync_api.expect(page.locator("#step-text")).to_have_text("scoring…")
        sync_api.expect(page.locator("#progress")).to_have_class(re.compile(r"\bindeterminate\b"))
        sync_api.expect(page.locator("#progress .label")).to_have_text("")
    finally:
        page.unroute(url, lagging)
        with ui.api() as c:
            c.post(f"/v1/jobs/{job_id}/cancel")
            wait_for_job(c, job_id, until={"cancelled", "failed", "succeeded"}, timeout=120)
    assert ui.take_errors() == []


def test_a_job_whose_training_went_wrong_shows_its_warnings_with_what_to_try(
    ui: Session, own_datasets: list[dict]
) -> None:
    page = ui.page
    with ui.api() as c:
        job = c.post("/v1/jobs", json={"dataset_id": own_datasets[0]["id"], "validation_fraction": 0.25,
                                       "hyperparameters": {"epochs": 1, "batch_size": 8}}).json()
        job = wait_for_job(c, job["id"], until={"succeeded", "failed", "cancelled"}, timeout=180)
    assert job["status"] == "succeeded", job
    assert not job.get("warnings"), job  # a healthy run: no banner
    ui.goto(f"/jobs/{job['id']}")
    sync_api.expect(page.locator("#eval-table")).to_be_visible()
    assert page.locator("#job-warnings .warnings").count() == 0
    # A job whose training goes wrong (learning rate 5: the loss ends at chance) succeeds with warnings, and
    # its page shows each of them with what to try.
    with ui.api() as c:
        bad = c.post("/v1/jobs", json={"dataset_id": own_datasets[0]["id"], "validation_fraction": 0.25,
                                       "hyperparameters": {"epochs": 3, "batch_size": 8, "learning_rate": 5.0}}).json()
        bad = wait_for_job(c, bad["id"], until={"succeeded", "failed", "cancelled"}, timeout=180)
    assert bad["status"] == "succeeded" and bad["warnings"], bad
    warnings = bad["warnings"]
    ui.goto(f"/jobs/{bad['id']}")
    items = page.locator("#job-warnings .warnings li")
    sync_api.expect(items).to_have_count(len(warnings))
    for item, w in zip(items.all(), warnings, strict=True):
        sync_api.expect(item).to_have_attribute("data-code", w["code"])
        sync_api.expect(item).to_contain_text(w["message"])
        sync_api.expect(item.locator(".hint-text")).to_have_text(f"→ {w['hint'][0].upper()}{w['hint'][1:]}")
    sync_api.expect(page.locator("#status .badge")).to_have_text("succeeded")  # it still succeeded
    ui.shot("12-job-warnings")
    assert ui.take_errors() == []
