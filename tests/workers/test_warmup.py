"""WAN_WARMUP: a GPU worker compiles both speeds for the listed sizes when it starts (CPU: fast mode's copy)."""
from workers import runtime


def test_worker_warm_up_follows_the_setting(settings, tiny_model):
    settings.WAN_WARMUP = ["64x64x5"]
    runtime.warm_up()
    assert runtime.get_runtime().fast is not None
