"""A job's time limit scales with its work: long healthy jobs are never cut, stuck ones still end."""

import pytest

from workers.watchdogs import Deadline


def never():
    raise AssertionError("the hard limit must not fire in this test")


def test_the_limit_grows_with_the_steps_of_the_job():
    one = Deadline.for_steps(25, base_s=900, per_step_s=120, grace_s=600, on_hard_limit=never)
    twenty = Deadline.for_steps(20 * 25, base_s=900, per_step_s=120, grace_s=600, on_hard_limit=never)
    assert one.soft_s == 900 + 25 * 120
    # 20 prompts at about 4 minutes each (an H100's default request) fit with room to spare.
    assert twenty.soft_s == 900 + 500 * 120 > 20 * 4 * 60 * 5


def test_the_soft_limit_is_checked_with_a_timeout():
    from workers.watchdogs import JobTimeout

    with Deadline.for_steps(3, base_s=0, per_step_s=0, grace_s=60, on_hard_limit=never) as deadline:
        with pytest.raises(JobTimeout, match="time limit of 0s"):
            deadline.check()
