"""The "job done" announcement: a worker publishes a job's id on Redis once its outcome is
stored, and a request waiting for that job wakes on it instead of waiting for its next look."""

from __future__ import annotations

import threading
import time

import redis

from api import submission
from models.settings import Settings
from models.store.lifecycle import JOB_DONE_CHANNEL
from worker.tasks import _ProcessState


def test_a_worker_announces_a_stored_outcome(redis_url):
    listener = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
    listener.subscribe(JOB_DONE_CHANNEL)
    state = _ProcessState()
    state.settings = Settings(broker_url=redis_url)
    state.announce_done("job-42")
    message = None
    deadline = time.monotonic() + 60  # generous: the machine may be busy
    while message is None and time.monotonic() < deadline:
        message = listener.get_message(timeout=0.1)
    listener.close()
    assert message is not None and message["data"] == b"job-42"


def test_announcements_need_a_redis_broker(tmp_path):
    state = _ProcessState()
    state.settings = Settings(broker_url=f"filesystem://{tmp_path}")
    state.announce_done("job-42")  # nothing to announce on, and no error
    assert state._redis is None


def test_a_waiting_request_wakes_on_its_own_job_only(app, redis_url):
    app.config["ACTQ_SETTINGS"] = app.config["ACTQ_SETTINGS"].model_copy(
        update={"broker_url": redis_url}
    )
    with app.app_context():
        subscription = submission._job_done_announcements()
        assert subscription is not None
        woke = threading.Event()

        def wait() -> None:
            submission._await_announcement(subscription, "mine", seconds=60)
            woke.set()

        waiter = threading.Thread(target=wait)
        waiter.start()
        publisher = redis.Redis.from_url(redis_url)
        # the subscription is registered before the thread listens, so nothing is missed
        publisher.publish(JOB_DONE_CHANNEL, "someone-else")
        assert not woke.wait(0.5)  # another job's announcement does not end the wait
        publisher.publish(JOB_DONE_CHANNEL, "mine")
        waiter.join(30)
        subscription.close()
    assert woke.is_set()


def test_without_redis_waiting_polls(app):
    with app.app_context():
        assert submission._job_done_announcements() is None
