"""WAN_WARMUP: a GPU worker compiles both speeds for the listed sizes when it starts (CPU: fast mode's copy)."""

from workers.host import GpuHost


def test_worker_warm_up_follows_the_setting(settings, tiny_model):
    settings.WAN_WARMUP = ["64x64x5"]
    host = GpuHost()
    host.setup()
    assert host.runtime.fast is not None
