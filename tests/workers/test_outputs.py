"""What an output's MP4 carries: the reproduction record as every member may read it."""

from workers.outputs import shared_record

RECORD = {
    "seed": 42,
    "loras": [
        {"name": "team/a", "sha256": "a" * 64, "multiplier": 0.5},
        {"name": "secret", "sha256": "b" * 64, "multiplier": 1.2, "private": True},
    ],
}


def test_the_mp4_names_no_private_lora_and_keeps_its_multiplier():
    shared = shared_record(RECORD)
    assert shared["loras"][0] == RECORD["loras"][0]
    assert shared["loras"][1] == {"name": "private LoRA", "sha256": None, "multiplier": 1.2, "private": True}
    assert RECORD["loras"][1]["name"] == "secret"  # the stored record, shown to its owner, keeps it
