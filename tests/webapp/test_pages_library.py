"""The LoRA library and prompt-set pages: search, upload semantics, header facts, editing, who may change what."""

import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.conftest import TINY_SHAPE
from tests.webapp.conftest import RESOLVED, client_of
from webapp.jobs.models import GenerationJob, JobLora
from webapp.loras.models import Lora
from webapp.loras.services import lora_upload
from webapp.prompts.models import PromptSet
from webapp.prompts.services import prompt_set_create
from workers.pipeline.checkpoints import write_aitoolkit_lora

pytestmark = pytest.mark.django_db


@pytest.fixture
def make_lora(tmp_path, tiny_model):
    def make(owner, seed: int, **fields) -> Lora:
        path = write_aitoolkit_lora(
            tmp_path / f"job_{seed}.safetensors",
            shape=TINY_SHAPE,
            seed=seed,
            rank=4,
            software_version="0.9.7",
            training_step=1500,
            trigger_words=("ohwx",),
        )
        with path.open("rb") as fh:
            return lora_upload(fh=fh, filename=path.name, owner=owner, **fields).lora

    return make


def lora_file(tmp_path, name="beach_job.safetensors") -> SimpleUploadedFile:
    """The same bytes every time, under any file name."""
    path = tmp_path / "beach_job.safetensors"
    if not path.exists():
        write_aitoolkit_lora(path, shape=TINY_SHAPE, seed=21, rank=8, training_step=2500)
    return SimpleUploadedFile(name, path.read_bytes())


@pytest.mark.parametrize("url", ["/loras/", "/loras/1/", "/prompt-sets/", "/prompt-sets/new/", "/prompt-sets/1/"])
def test_pages_need_a_signed_in_member(client, url):
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


# LoRAs


def test_library_lists_what_the_viewer_may_see_with_job_counts_and_links(alice, bob, make_lora):
    shared = make_lora(alice, 1, name="shared-one", trigger_word="sks", default_multiplier=0.8)
    make_lora(bob, 2, name="bobs-private", visibility="private")
    job = GenerationJob.objects.create(owner=alice, prompts=[RESOLVED])
    JobLora.objects.create(job=job, lora=shared, sha256=shared.sha256, name=shared.name)
    JobLora.objects.create(
        job=GenerationJob.objects.create(owner=bob, prompts=[RESOLVED]),
        lora=shared,
        sha256=shared.sha256,
        name=shared.name,
    )

    page = client_of(alice).get("/loras/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "shared-one" in html and "bobs-private" not in html
    row = html[html.index("shared-one") :]
    assert f'href="/?lora={shared.pk}"' in row and f"/jobs/new/?lora={shared.pk}" in row
    assert ">2</a>" in row.split("</tr>")[0]  # two jobs used it
    for fact in ("wan21_14b", "0.9.7", "1500", "sks", "0.8", "team", "KB"):
        assert fact in row.split("</tr>")[0]
    assert "bobs-private" in client_of(bob).get("/loras/").content.decode()


def test_library_search_by_text_and_owner(alice, bob, make_lora):
    make_lora(alice, 1, name="beach-style", trigger_word="sandy")
    make_lora(bob, 2, name="snow-style", trigger_word="frosty")
    client = client_of(alice)

    def names(**params) -> set[str]:
        return {lora.name for lora in client.get("/loras/", params).context["loras"]}

    newest_first = [lora.name for lora in client.get("/loras/").context["loras"]]
    assert newest_first == ["snow-style", "beach-style"]
    assert names(q="BEACH") == names(q="sand") == {"beach-style"}
    assert names(owner="bob") == {"snow-style"}
    assert names(q="style", owner="alice") == {"beach-style"}
    assert "No LoRA matches." in client.get("/loras/", {"q": "nothing-like-it"}).content.decode()


def test_library_reads_in_a_fixed_number_of_queries(alice, make_lora, django_assert_max_num_queries):
    for seed in range(1, 6):
        lora = make_lora(alice, seed, name=f"lora-{seed}")
        JobLora.objects.create(
            job=GenerationJob.objects.create(owner=alice, prompts=[RESOLVED]),
            lora=lora,
            sha256=lora.sha256,
            name=lora.name,
        )
    client = client_of(alice)
    with django_assert_max_num_queries(8):
        assert client.get("/loras/").status_code == 200


def test_upload_from_the_page_then_again_says_it_is_already_there(alice, tmp_path):
    client = client_of(alice)
    first = client.post("/loras/", {"file": lora_file(tmp_path), "visibility": "team"}, follow=True)
    lora = Lora.objects.get()
    assert first.redirect_chain == [(f"/loras/{lora.pk}/", 302)]
    assert "Registered beach_job" in first.content.decode()

    again = client.post(
        "/loras/", {"file": lora_file(tmp_path, name="copy.safetensors"), "visibility": "team"}, follow=True
    )
    assert again.redirect_chain == [(f"/loras/{lora.pk}/", 302)]
    assert "already in the library as beach_job" in again.content.decode()
    assert Lora.objects.count() == 1


def test_upload_with_another_name_for_known_bytes_shows_the_conflict(alice, tmp_path):
    client = client_of(alice)
    client.post("/loras/", {"file": lora_file(tmp_path), "name": "first-name", "visibility": "team"})
    response = client.post("/loras/", {"file": lora_file(tmp_path), "name": "second-name", "visibility": "team"})
    assert response.status_code == 409
    html = response.content.decode()
    assert "LORA_EXISTS" in html and "already in the library as first-name" in html
    assert "second-name" in html and f'href="/loras/{Lora.objects.get().pk}/"' in html
    assert list(Lora.objects.values_list("name", flat=True)) == ["first-name"]


@pytest.mark.parametrize(
    "data,code",
    [
        (b"plain text, not a LoRA at all\n", "LORA_NOT_SAFETENSORS"),
        (b"", "LORA_FILE_TRUNCATED"),
    ],
)
def test_bad_upload_shows_its_code_and_message(alice, data, code):
    response = client_of(alice).post(
        "/loras/", {"file": SimpleUploadedFile("x.safetensors", data), "visibility": "team"}
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert code in html and ("This file is not a safetensors file." in html or code != "LORA_NOT_SAFETENSORS")
    assert not Lora.objects.exists()


def test_upload_form_checks_its_fields(alice, tmp_path):
    response = client_of(alice).post(
        "/loras/", {"file": lora_file(tmp_path), "name": "12345", "default_multiplier": "9", "visibility": "team"}
    )
    assert response.status_code == 400
    assert set(response.context["form"].errors) == {"name", "default_multiplier"}
    assert not Lora.objects.exists()


def test_detail_shows_the_header_facts(alice, make_lora):
    lora = make_lora(alice, 3, name="facts")
    html = client_of(alice).get(f"/loras/{lora.pk}/").content.decode()
    for fact in (
        "ai-toolkit keys",
        "self_attn.q",
        "ffn.2",
        lora.sha256,
        "0.9.7",
        "1500",
        "ohwx",
        f"/jobs/new/?lora={lora.pk}",
        "Delete this LoRA",
    ):
        assert fact in html


def test_detail_of_another_users_private_lora_is_not_found(alice, bob, make_lora):
    lora = make_lora(bob, 4, visibility="private")
    assert client_of(alice).get(f"/loras/{lora.pk}/").status_code == 404


def test_only_the_owner_or_staff_delete(alice, bob, make_lora, django_user_model):
    lora = make_lora(alice, 5)
    assert "Delete this LoRA" not in client_of(bob).get(f"/loras/{lora.pk}/").content.decode()
    assert client_of(bob).post(f"/loras/{lora.pk}/delete/").status_code == 403
    assert Lora.objects.exists()

    staff = django_user_model.objects.create_user("staff", password="pw-staff-123", is_staff=True)
    response = client_of(staff).post(f"/loras/{lora.pk}/delete/", follow=True)
    assert response.redirect_chain == [("/loras/", 302)] and f"Deleted {lora.name}." in response.content.decode()
    assert not Lora.objects.exists()


# Prompt sets


ITEMS = [
    {"prompt": "[trigger] on a beach", "width": 128, "height": 128, "num_frames": 9},
    {"prompt": "[trigger] in the snow", "seed": 7},
    {"prompt": "a cat", "guidance_scale": 0.0, "neg": "blurry"},
]


@pytest.fixture
def beach_set(alice):
    return prompt_set_create(owner=alice, name="beach", items=ITEMS, trigger_word="sks")


def editor_post(prompt_set_page, **overrides) -> dict:
    """What the editor's form submits, as the page shows it, with some fields changed."""
    form, items = prompt_set_page.context["form"], prompt_set_page.context["items"]
    data = {name: form[name].value() or "" for name in form.fields}
    data.update({field.html_name: field.value() for field in items.management_form})
    for item in items:
        data.update({item[name].html_name: item[name].value() or "" for name in item.fields})
    data.update(overrides)
    return data


def test_prompt_set_list_shows_counts_and_render_links(alice, beach_set):
    html = client_of(alice).get("/prompt-sets/").content.decode()
    assert "beach" in html and ">3</td>" in html and f"/jobs/new/?prompt_set={beach_set.pk}" in html


def test_editor_shows_one_line_per_prompt_with_defaults_and_limits(alice, beach_set):
    page = client_of(alice).get(f"/prompt-sets/{beach_set.pk}/")
    html = page.content.decode()
    assert html.count('name="action" value="up:') == 3 and "<details" in html
    width = re.search(r'<input [^>]*name="items-0-width"[^>]*>', html).group(0)
    assert all(
        attr in width for attr in ('type="number"', 'value="128"', 'min="64"', 'max="4096"', 'placeholder="1024"')
    )
    assert 'placeholder="25"' in html and 'placeholder="41"' in html and 'placeholder="16"' in html
    seed = re.search(r'<input [^>]*name="items-2-seed"[^>]*>', html).group(0)
    assert 'placeholder="44"' in seed  # a prompt without a seed gets 42 + its position
    assert f"/jobs/new/?prompt_set={beach_set.pk}" in html


def test_moving_an_item_shows_it_moved_without_saving(alice, beach_set):
    client = client_of(alice)
    page = client.get(f"/prompt-sets/{beach_set.pk}/")
    moved = client.post(
        f"/prompt-sets/{beach_set.pk}/", editor_post(page, action="down:0", **{"items-0-prompt": "edited beach"})
    )
    assert moved.status_code == 200
    assert [item["prompt"].value() for item in moved.context["items"]] == [
        "[trigger] in the snow",
        "edited beach",
        "a cat",
    ]
    assert beach_set.request_items() == ITEMS  # nothing saved yet

    saved = client.post(f"/prompt-sets/{beach_set.pk}/", editor_post(moved, action="save"), follow=True)
    assert saved.redirect_chain == [(f"/prompt-sets/{beach_set.pk}/", 302)]
    assert PromptSet.objects.get().request_items() == [ITEMS[1], {**ITEMS[0], "prompt": "edited beach"}, ITEMS[2]]


def test_add_and_remove_items(alice, beach_set):
    client = client_of(alice)
    page = client.get(f"/prompt-sets/{beach_set.pk}/")
    added = client.post(f"/prompt-sets/{beach_set.pk}/", editor_post(page, action="add"))
    assert len(added.context["items"].forms) == 4
    removed = client.post(
        f"/prompt-sets/{beach_set.pk}/", editor_post(added, action="remove:1", **{"items-3-prompt": "a dog"})
    )
    assert [item["prompt"].value() for item in removed.context["items"]] == ["[trigger] on a beach", "a cat", "a dog"]
    client.post(f"/prompt-sets/{beach_set.pk}/", editor_post(removed, action="save"))
    assert [item["prompt"] for item in PromptSet.objects.get().request_items()] == [
        "[trigger] on a beach",
        "a cat",
        "a dog",
    ]


def test_items_are_checked_as_the_api_checks_them(alice, beach_set):
    client = client_of(alice)
    page = client.get(f"/prompt-sets/{beach_set.pk}/")
    response = client.post(
        f"/prompt-sets/{beach_set.pk}/",
        editor_post(
            page, action="save", **{"items-0-width": "5000", "items-2-prompt": "", "items-1-guidance_scale": "x"}
        ),
    )
    assert response.status_code == 400
    forms = response.context["items"].forms
    assert "4096" in forms[0].errors["width"][0]
    assert forms[2].errors["prompt"] and forms[1].errors["guidance_scale"]
    assert "Nothing was saved" in response.content.decode()
    assert PromptSet.objects.get().request_items() == ITEMS


def test_create_a_prompt_set_from_the_page(alice):
    client = client_of(alice)
    page = client.get("/prompt-sets/new/")
    assert len(page.context["items"].forms) == 1
    response = client.post(
        "/prompt-sets/new/",
        editor_post(
            page,
            action="save",
            name="fresh",
            trigger_word="ohwx",
            **{"items-0-prompt": "[trigger] waves", "items-0-fps": "24"},
        ),
        follow=True,
    )
    prompt_set = PromptSet.objects.get()
    assert response.redirect_chain == [(f"/prompt-sets/{prompt_set.pk}/", 302)]
    assert (prompt_set.name, prompt_set.owner, prompt_set.trigger_word) == ("fresh", alice, "ohwx")
    assert prompt_set.request_items() == [{"prompt": "[trigger] waves", "fps": 24}]


def test_a_set_with_no_prompts_is_refused(alice):
    response = client_of(alice).post(
        "/prompt-sets/new/", {"name": "empty", "items-TOTAL_FORMS": "0", "items-INITIAL_FORMS": "0", "action": "save"}
    )
    assert response.status_code == 400 and "at least one prompt" in response.content.decode()
    assert not PromptSet.objects.exists()


def test_others_read_but_only_owner_or_staff_change(alice, bob, beach_set, django_user_model):
    page = client_of(bob).get(f"/prompt-sets/{beach_set.pk}/")
    html = page.content.decode()
    assert page.status_code == 200 and "in the snow" in html and 'name="action"' not in html
    assert (
        client_of(bob).post(f"/prompt-sets/{beach_set.pk}/", {"name": "taken over", "action": "save"}).status_code
        == 403
    )
    assert client_of(bob).post(f"/prompt-sets/{beach_set.pk}/delete/").status_code == 403

    staff = client_of(django_user_model.objects.create_user("staff", password="pw-staff-123", is_staff=True))
    staff_page = staff.get(f"/prompt-sets/{beach_set.pk}/")
    staff.post(f"/prompt-sets/{beach_set.pk}/", editor_post(staff_page, action="save", name="renamed by staff"))
    assert PromptSet.objects.get().name == "renamed by staff"
    assert staff.post(f"/prompt-sets/{beach_set.pk}/delete/").status_code == 302
    assert not PromptSet.objects.exists()
