"""The jobs pages without a browser: queue filters and pages, buttons by permission, submitting from the
form (limits as the API's), pre-fill, the job page, ETAs and the queue's query count."""

import re
import time

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from webapp.jobs import views
from webapp.jobs.models import GenerationJob, JobLora, JobOutput
from webapp.loras.services import lora_resolve
from webapp.prompts.services import prompt_set_create

pytestmark = pytest.mark.django_db
SIZE = {"width": 128, "height": 128, "num_frames": 9, "sample_steps": 4}


def make_job(
    owner, *, status="queued", prompt="a cat on a beach", loras=(), outputs=0, step=0, prompts=1, **fields
) -> GenerationJob:
    """A job row as a worker would have left it (pages only read it)."""
    items = [
        {
            "prompt": f"{prompt} {i}" if i else prompt,
            "neg": "",
            "guidance_scale": 4.0,
            "seed": 42 + i,
            "fps": 16,
            "lora_scale": None,
            **SIZE,
        }
        for i in range(prompts)
    ]
    job = GenerationJob.objects.create(
        owner=owner,
        status=status,
        prompts=items,
        progress={"prompt": 0, "prompts": prompts, "step": step, "steps": 4, "fraction": step / 4 / prompts},
        **fields,
    )
    for position, (lora, multiplier) in enumerate(loras):
        JobLora.objects.create(
            job=job, lora=lora, position=position, multiplier=multiplier, sha256=lora.sha256, name=lora.name
        )
    for index in range(outputs):
        JobOutput.objects.create(
            job=job,
            index=index,
            video=f"outputs/{job.pk}/{index:03d}.mp4",
            poster=f"outputs/{job.pk}/{index:03d}.png",
            width=128,
            height=128,
            num_frames=9,
            fps=16,
            seed=42,
            scheduler="euler",
            record={
                "prompt": prompt,
                "seed": 42,
                "timings": {"denoise_per_step": 30.0},
                "loras": [{"name": "job_a", "sha256": "ab" * 32, "multiplier": 0.6}],
            },
        )
    return job


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="pw-alice-123")


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob", password="pw-bob-123")


@pytest.fixture
def member(alice):
    """alice, a team member who is not staff, signed in."""
    client = Client()
    client.force_login(alice)
    return client


@pytest.fixture
def loras(tiny_model, lora_files):
    return lora_resolve(ref="job_a/job_a.safetensors"), lora_resolve(ref="job_b/job_b.safetensors")


def job_ids(response) -> set[str]:
    return set(re.findall(r'<tr id="job-([0-9a-f-]{36})"', response.content.decode()))


def test_pages_need_a_signed_in_member(client, alice):
    job = make_job(alice)
    for url in ["/", "/jobs/new/", f"/jobs/{job.pk}/", f"/jobs/{job.pk}/status/"]:
        assert client.get(url).status_code == 302, url
    assert client.post(f"/jobs/{job.pk}/cancel/").status_code == 302
    assert GenerationJob.objects.get().status == "queued"


def test_queue_filters_by_status_owner_lora_and_prompt_text(member, alice, bob, loras):
    a, b = loras
    mine = make_job(alice, prompt="a red fox in snow", loras=[(a, 0.6)])
    failed = make_job(
        bob,
        status="failed",
        prompt="a red fox at night",
        loras=[(b, 1.0)],
        error_code="OOM",
        error_message="CUDA out of memory",
    )
    other = make_job(bob, prompt="a blue whale", loras=[(a, 1.0), (b, 0.5)])
    assert job_ids(member.get("/")) == {str(mine.pk), str(failed.pk), str(other.pk)}
    assert job_ids(member.get("/?status=failed")) == {str(failed.pk)}
    assert job_ids(member.get("/?owner=bob")) == {str(failed.pk), str(other.pk)}
    assert job_ids(member.get(f"/?lora={a.pk}")) == {str(mine.pk), str(other.pk)}
    assert job_ids(member.get("/?q=RED+FOX")) == {str(mine.pk), str(failed.pk)}
    combined = member.get(f"/?status=queued&owner=bob&lora={b.pk}&q=whale")
    assert job_ids(combined) == {str(other.pk)}
    page = combined.content.decode()
    assert 'value="whale"' in page and '<option value="bob" selected>' in page  # the form shows the filters
    assert job_ids(member.get("/?status=nonsense")) == {str(mine.pk), str(failed.pk), str(other.pk)}
    # a failed job shows its error code and message; stacks read "name @ multiplier"
    everything = member.get("/").content.decode()
    assert "OOM" in everything and "CUDA out of memory" in everything
    assert "job_a @ 1" in everything and "job_b @ 0.5" in everything


def test_queue_paginates_and_its_links_keep_the_filters(member, alice, bob):
    for i in range(30):
        make_job(alice, prompt=f"beach {i}")
    make_job(bob, prompt="beach by bob")
    first = member.get("/?owner=alice&q=beach")
    assert len(job_ids(first)) == views.QUEUE_PAGE_SIZE == 25
    assert "?owner=alice&amp;q=beach&amp;page=2" in first.content.decode()
    second = member.get("/?owner=alice&q=beach&page=2")
    assert len(job_ids(second)) == 5 and not job_ids(first) & job_ids(second)
    assert "?owner=alice&amp;q=beach&amp;page=1" in second.content.decode()


def buttons(response, job) -> set[str]:
    page = response.content.decode()
    return {action for action in ("cancel", "retry", "rerun") if f"/jobs/{job.pk}/{action}/" in page}


def test_buttons_only_for_what_the_viewer_may_do(member, alice, bob, django_user_model):
    own_queued, bobs_queued = make_job(alice), make_job(bob)
    own_failed, bobs_failed = make_job(alice, status="failed"), make_job(bob, status="failed")
    bobs_done = make_job(bob, status="succeeded")
    queue = member.get("/")
    assert buttons(queue, own_queued) == {"cancel"} and buttons(queue, bobs_queued) == set()
    assert buttons(queue, own_failed) == {"retry", "rerun"} and buttons(queue, bobs_failed) == {"rerun"}
    assert buttons(queue, bobs_done) == {"rerun"}
    assert buttons(member.get(f"/jobs/{bobs_failed.pk}/"), bobs_failed) == {"rerun"}
    staff = Client()
    staff.force_login(django_user_model.objects.create_user("boss", password="pw-boss-123", is_staff=True))
    queue = staff.get("/")
    assert buttons(queue, bobs_queued) == {"cancel"} and buttons(queue, bobs_failed) == {"retry", "rerun"}


def test_buttons_without_javascript_redirect_back_keeping_the_filters(member, alice, bob):
    job = make_job(alice)
    back = "/?status=queued&q=cat"
    response = member.post(f"/jobs/{job.pk}/cancel/", {"next": back})
    assert response.status_code == 302 and response["Location"] == back
    job.refresh_from_db()
    assert job.status == "canceled"
    assert member.post(f"/jobs/{job.pk}/retry/", {"next": back})["Location"] == back
    job.refresh_from_db()
    assert job.status == "queued"
    member.post(f"/jobs/{job.pk}/cancel/", {"next": back})
    response = member.post(f"/jobs/{job.pk}/rerun/", {"next": back}, follow=True)
    new = GenerationJob.objects.exclude(pk=job.pk).get()
    assert new.owner == job.owner and new.prompts == job.prompts and new.status == "queued"
    assert f"re-run as job {str(new.pk)[:8]}" in response.content.decode()
    # from the job page (no `next`), a re-run goes to the new job
    newer = member.post(f"/jobs/{job.pk}/rerun/")
    assert newer["Location"] == f"/jobs/{GenerationJob.objects.latest('created_at').pk}/"
    # someone else's job: refused with the service's code, nothing changes
    bobs = make_job(bob)
    refused = member.post(f"/jobs/{bobs.pk}/cancel/", {"next": "https://elsewhere.example/"}, follow=True)
    assert refused.redirect_chain[0][0] == f"/jobs/{bobs.pk}/"  # never off-site
    assert "PERMISSION_DENIED" in refused.content.decode()
    bobs.refresh_from_db()
    assert bobs.status == "queued"


def test_buttons_with_htmx_swap_the_row(member, alice, bob):
    job = make_job(alice)
    response = member.post(f"/jobs/{job.pk}/cancel/", {"next": "/?q=cat"}, HTTP_HX_REQUEST="true")
    page = response.content.decode()
    assert response.status_code == 200 and page.strip().startswith(f'<tr id="job-{job.pk}"')
    assert "badge canceled" in page and f"/jobs/{job.pk}/retry/" in page and 'value="/?q=cat"' in page
    rerun = member.post(f"/jobs/{job.pk}/rerun/", HTTP_HX_REQUEST="true").content.decode()
    new = GenerationJob.objects.exclude(pk=job.pk).get()
    assert re.findall(r'<tr id="job-([0-9a-f-]+)"', rerun) == [str(new.pk), str(job.pk)]
    refused = member.post(f"/jobs/{make_job(bob).pk}/cancel/", HTTP_HX_REQUEST="true").content.decode()
    assert "PERMISSION_DENIED" in refused and "badge queued" in refused


def test_active_rows_poll_their_status_cell_and_finished_rows_do_not(member, alice):
    running = make_job(alice, status="running", step=2)
    done = make_job(alice, status="succeeded", outputs=1)
    page = member.get("/").content.decode()
    assert f'hx-get="/jobs/{running.pk}/status/?next=/"' in page
    assert f"/jobs/{done.pk}/status/" not in page
    cell = member.get(f"/jobs/{running.pk}/status/?next=/").content.decode()
    assert cell.strip().startswith(f'<td class="status-cell" id="job-{running.pk}-status"')
    assert "prompt 1/1 · step 2/4" in cell and 'hx-trigger="every 2s"' in cell and "<video" not in cell
    GenerationJob.objects.filter(pk=running.pk).update(status="succeeded")
    final = member.get(f"/jobs/{running.pk}/status/?next=/")
    assert final["HX-Retarget"] == f"#job-{running.pk}" and final["HX-Reswap"] == "outerHTML"
    assert "hx-trigger" not in final.content.decode() and "Re-run" in final.content.decode()
    detail = member.get(f"/jobs/{done.pk}/status/?view=detail")
    assert detail["HX-Refresh"] == "true"


def test_eta_from_measured_step_times(member, alice, bob):
    unmeasured = make_job(alice, status="running")
    assert "ETA unknown" in member.get("/").content.decode()
    make_job(bob, status="succeeded", outputs=1)  # 30 s a step at 128x128x9
    unmeasured.delete()
    running = make_job(alice, status="running", step=2, prompts=2)  # 2 + 4 steps left: 3 min
    queued = make_job(bob, prompt="waiting")  # 3 min ahead + 4 steps: 5 min
    etas = views.job_etas(jobs=[running, queued])
    assert etas == {running.pk: pytest.approx(180), queued.pk: pytest.approx(300)}
    page = member.get("/").content.decode()
    assert "ETA ~3 min" in page and "ETA ~5 min" in page
    make_job(bob, prompt="urgent", priority=9)  # goes first: 2 min more before `queued`
    assert views.job_etas(jobs=[queued])[queued.pk] == pytest.approx(420)


def form_data(**fields) -> dict:
    return {
        "prompt_rows": "3",
        "scheduler": "auto",
        "speed": "exact",
        "priority": "0",
        "prompt_semantics": "reference",
        **fields,
    }


def test_member_submits_a_two_lora_stack_at_chosen_multipliers(member, alice, loras):
    a, b = loras
    response = member.post(
        "/jobs/new/",
        form_data(
            **{
                "prompt-0-prompt": "[trigger] dancing",
                "prompt-0-width": "128",
                "prompt-0-height": "128",
                "prompt-0-num_frames": "9",
                "prompt-0-sample_steps": "2",
                "prompt-1-prompt": "a second prompt",
                "lora-0-lora": str(a.pk),
                "lora-0-multiplier": "0.6",
                "lora-2-lora": str(b.pk),
                "lora-2-multiplier": "1.2",
                "trigger_word": "sks",
                "priority": "3",
                "webp": "on",
            }
        ),
    )
    job = GenerationJob.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/jobs/{job.pk}/"
    assert job.owner == alice and not alice.is_staff
    assert [(jl.lora_id, jl.multiplier) for jl in job.job_loras.all()] == [(a.pk, 0.6), (b.pk, 1.2)]
    assert [p["prompt"] for p in job.prompts] == ["sks dancing", "a second prompt"]
    assert job.prompts[0]["sample_steps"] == 2 and job.prompts[1]["width"] == 1024  # defaults as the API's
    assert (job.priority, job.webp, job.speed) == (3, True, "exact")


def test_an_empty_multiplier_takes_the_loras_default(member, loras):
    a, _ = loras
    a.default_multiplier = 0.8
    a.save()
    member.post("/jobs/new/", form_data(**{"prompt-0-prompt": "a cat", "lora-0-lora": str(a.pk)}))
    assert GenerationJob.objects.get().job_loras.get().multiplier == 0.8


def test_submit_shows_the_apis_errors_next_to_the_fields(member, loras):
    a, b = loras
    response = member.post(
        "/jobs/new/",
        form_data(
            **{
                "prompt-1-prompt": "a cat",
                "prompt-1-width": "5000",
                "lora-0-lora": str(a.pk),
                "lora-0-multiplier": "3",
                "priority": "12",
            }
        ),
    )
    page = response.content.decode()
    assert response.status_code == 400 and GenerationJob.objects.count() == 0
    assert page.count("Ensure this value is less than or equal to") == 3  # width, multiplier, priority
    assert 'name="prompt-1-width"' in page and 'value="5000"' in page  # what was typed stays
    width_field = page.index('name="prompt-1-width"')
    assert page.index("less than or equal to 4096", width_field) < page.index('name="prompt-1-sample_steps"')
    conflict = member.post(
        "/jobs/new/", form_data(**{"prompt-0-prompt": "a cat", "speed": "fast", "step_cache": "0.1"})
    ).content.decode()
    assert "OPTIONS_CONFLICT" in conflict
    nothing = member.post("/jobs/new/", form_data()).content.decode()
    assert "Give either prompt_set or prompts." in nothing
    duplicate = member.post(
        "/jobs/new/", form_data(**{"prompt-0-prompt": "a cat", "lora-0-lora": str(a.pk), "lora-1-lora": str(a.pk)})
    ).content.decode()
    assert "LORA_DUPLICATE" in duplicate
    assert GenerationJob.objects.count() == 0


def test_submit_from_a_prompt_set(member, alice):
    prompt_set = prompt_set_create(
        owner=alice, name="beach", trigger_word="sks", items=[{"prompt": "[trigger] on a beach", **SIZE}]
    )
    page = member.get(f"/jobs/new/?prompt_set={prompt_set.pk}").content.decode()
    assert f'<option value="{prompt_set.pk}" selected>beach</option>' in page
    response = member.post("/jobs/new/", form_data(prompt_set=str(prompt_set.pk)))
    assert response.status_code == 302
    assert GenerationJob.objects.get().prompts[0]["prompt"] == "sks on a beach"


def test_prefill_from_a_job_and_from_a_lora(member, alice, bob, loras):
    a, b = loras
    job = make_job(
        bob, status="succeeded", prompt="a fox", prompts=2, loras=[(a, 0.6), (b, 1.2)], priority=4, speed="fast"
    )
    page = member.get(f"/jobs/new/?from={job.pk}").content.decode()
    assert "\na fox</textarea>" in page and "\na fox 1</textarea>" in page
    assert re.search(rf'<option value="{a.pk}"[^>]* selected>', page)
    assert 'name="lora-0-multiplier" value="0.6"' in page and 'name="lora-1-multiplier" value="1.2"' in page
    assert 'name="priority" value="4"' in page and '<option value="fast" selected>' in page
    assert 'name="prompt-1-seed" value="43"' in page
    a.default_multiplier = 0.7
    a.trigger_word = "foxy"
    a.save()
    page = member.get(f"/jobs/new/?lora={a.pk}").content.decode()
    assert re.search(rf'<option value="{a.pk}"[^>]* selected>', page)
    assert 'name="lora-0-multiplier" value="0.7"' in page and "trigger word: foxy" in page
    assert "No job with id" in member.get("/jobs/new/?from=nope").content.decode()


def test_submit_with_a_webhook_to_an_allowed_host(member, alice, bob, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["hooks.internal"]
    empty = member.get("/jobs/new/").content.decode()
    assert '<details class="webhook">' in empty  # collapsed until wanted
    assert re.search(r'<input type="checkbox" name="webhook_events_filter" value="completed"[^>]* checked>', empty)
    assert "/api/v1/webhooks/secret" in empty and "Standard Webhooks" in empty
    response = member.post(
        "/jobs/new/",
        form_data(
            **{"prompt-0-prompt": "a cat", "webhook": "https://hooks.internal/render"},
            webhook_events_filter=["start", "completed"],
        ),
    )
    job = GenerationJob.objects.get()
    assert response.status_code == 302 and job.owner == alice
    assert (job.webhook, job.webhook_events_filter) == ("https://hooks.internal/render", ["start", "completed"])
    page = member.get(f"/jobs/{job.pk}/").content.decode()
    assert "https://hooks.internal/render" in page and "start, completed" in page and "Webhook deliveries" in page
    # re-rendering her own job keeps its webhook; the URL is hers, so only she (and staff) see it
    again = member.get(f"/jobs/new/?from={job.pk}").content.decode()
    assert '<details class="webhook" open>' in again and 'value="https://hooks.internal/render"' in again
    assert re.search(r'value="start"[^>]* checked>', again) and not re.search(r'value="progress"[^>]* checked>', again)
    other = Client()
    other.force_login(bob)
    assert "hooks.internal" not in other.get(f"/jobs/{job.pk}/").content.decode()
    theirs = other.get(f"/jobs/new/?from={job.pk}").content.decode()
    assert "hooks.internal" not in theirs and "The job&#x27;s webhook is not yours; it was left out." in theirs
    assert re.search(r'value="completed"[^>]* checked>', theirs)  # the default events instead


@pytest.mark.parametrize(
    "url, code, message",
    [
        ("http://hooks.example.com/render", "WEBHOOK_URL_NOT_HTTPS", "Webhook URLs must use https."),
        ("http://10.0.0.1/", "WEBHOOK_URL_NOT_HTTPS", "Webhook URLs must use https."),
        ("https://10.0.0.1/", "WEBHOOK_URL_PRIVATE_ADDRESS", "resolves to an address that is not public."),
        ("hooks.example.com/render", "WEBHOOK_URL_INVALID", "needs an https scheme, a host and no password."),
    ],
)
def test_a_refused_webhook_shows_the_apis_message_by_its_field(member, settings, url, code, message):
    settings.WEBHOOK_ALLOWED_HOSTS = ["hooks.internal"]
    response = member.post("/jobs/new/", form_data(**{"prompt-0-prompt": "a cat", "webhook": url}))
    page = response.content.decode()
    assert response.status_code == 400 and GenerationJob.objects.count() == 0
    assert code in page and '<details class="webhook" open>' in page
    field = page.index('name="webhook"')
    assert f'value="{url}"' in page[field - 200 : field + 200]  # what was typed stays
    assert page.index(message, field) < page.index('name="webhook_events_filter"')


def test_job_page_reads_like_a_person_would(member, alice, loras):
    a, _ = loras
    job = make_job(
        alice,
        status="succeeded",
        prompt="sks on a beach",
        loras=[(a, 0.6)],
        outputs=1,
        worker="gpu-3",
        attempts=1,
        timings={"load": 12.5, "prompts": [{"text_encode": 0.5, "denoise": 120.0}]},
    )
    page = member.get(f"/jobs/{job.pk}/").content.decode()
    for text in [
        "sks on a beach",
        "128 × 128",
        "9 at 16 fps",
        "job_a/job_a</a>",
        "@ 0.6",
        "gpu-3",
        "12.50 s",
        "120.00 s",
        f"/api/v1/outputs/{job.outputs.get().pk}/video",
        "poster=",
        "<details>",
        "denoise_per_step 30.00 s",
        f"/jobs/new/?from={job.pk}",
        "Reproduction record",
    ]:
        assert text in page, text
    assert "<dt>preset</dt><dd>standard</dd>" in page and '<dt>webhook</dt><dd class="wrap">none</dd>' in page
    draft = member.get(f"/jobs/{make_job(alice, preset='draft').pk}/").content.decode()
    assert "<dt>preset</dt><dd>draft (4 steps, no CFG)</dd>" in draft
    failed = make_job(alice, status="failed", error_code="TIMEOUT", error_message="past its time limit")
    page = member.get(f"/jobs/{failed.pk}/").content.decode()
    assert "TIMEOUT" in page and "past its time limit" in page and f"/jobs/{failed.pk}/retry/" in page
    assert member.get("/jobs/00000000-0000-0000-0000-000000000000/").status_code == 404


def test_the_queue_of_50_jobs_takes_a_constant_number_of_queries(
    member, alice, bob, loras, monkeypatch, django_assert_max_num_queries
):
    monkeypatch.setattr(views, "QUEUE_PAGE_SIZE", 50)
    statuses = ["queued", "running", "succeeded", "failed", "canceled"]

    def fill(jobs: int):
        for i in range(GenerationJob.objects.count(), jobs):
            make_job(
                [alice, bob][i % 2],
                status=statuses[i % 5],
                loras=list(zip(loras, (0.6, 1.2))),
                outputs=2 if statuses[i % 5] == "succeeded" else 0,
                prompts=2,
                step=1,
            )

    fill(5)
    with CaptureQueriesContext(connection) as few:
        assert len(job_ids(member.get("/"))) == 5
    fill(50)
    member.get("/")  # warm
    start = time.perf_counter()
    with django_assert_max_num_queries(12) as many:
        response = member.get("/")
    elapsed = time.perf_counter() - start
    assert len(job_ids(response)) == 50 and response.content.count(b'hx-trigger="every 2s"') == 20
    assert len(many.captured_queries) == len(few.captured_queries)
    print(f"queue page with 50 jobs: {len(many.captured_queries)} queries, {elapsed * 1000:.0f} ms")
