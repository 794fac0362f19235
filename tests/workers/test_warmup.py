"""WAN_FAST_WARMUP: a GPU worker builds fast mode for the listed sizes when it starts."""
from workers import runtime


def test_worker_warm_up_follows_the_setting(settings, tiny_model):
    settings.WAN_FAST_WARMUP = ["64x64x5"]
    runtime.warm_up_fast_mode()
    assert runtime.get_runtime().fast is not None
