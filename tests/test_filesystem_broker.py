"""The embedded mode's filesystem broker never hands a worker a half-written message.

kombu's filesystem transport creates a message file before it writes it, and its reader does not
take the writer's lock: a worker polling in between reads an empty file and dies on it (seen with
TDB's UI on ``actq up``: the worker stopped with ``JSONDecodeError`` and the service with it).
Here one thread writes messages through actq's Celery configuration while another drains the
queue as fast as it can; every message must arrive whole."""

from __future__ import annotations

import threading
from queue import Empty

from celery import Celery

from models.settings import Settings, celery_config, ensure_broker_folders

MESSAGES = 1500


def test_a_reader_racing_the_writer_gets_every_message_whole(tmp_path):
    settings = Settings(broker_url=f"filesystem://{tmp_path / 'broker'}")
    ensure_broker_folders(settings.broker())
    app = Celery("race", set_as_current=False)
    app.conf.update(celery_config(settings))
    got, failures = [], []

    def drain():
        with app.connection_for_read() as connection:
            channel = connection.default_channel
            while len(got) + len(failures) < MESSAGES:
                try:
                    got.append(channel._get("q")["i"])
                except Empty:
                    pass
                except Exception as error:  # kombu's own transport: JSONDecodeError
                    failures.append(repr(error))

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for i in range(MESSAGES):
            channel._put("q", {"i": i})
    reader.join(60)
    assert failures == []
    assert sorted(got) == list(range(MESSAGES))  # names sort by millisecond, then at random
