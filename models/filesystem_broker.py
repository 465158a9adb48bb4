"""kombu's filesystem transport with atomic writes: the broker of ``actq up`` (embedded mode).

kombu's own ``_put`` creates the message file, then locks and writes it, while ``_get`` moves
and reads files without the lock: a worker that polls between the create and the write reads an
empty file, fails to parse it and stops ("Unrecoverable error: JSONDecodeError"), and ``actq up``
stops with it. TDB's UI, pointed at ``actq up``, hit this in Chromium (its node table sends
requests in bursts). Here a message is written under a name the reader ignores (``.part``) and
renamed into place, which is atomic on one filesystem: a reader sees a whole message or none.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        """Put ``payload`` onto ``queue``: written whole, then renamed to its ``.msg`` name."""
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".part"  # ``_get`` takes only names ending in ``.QUEUE.msg``
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
