"""A parsed request checked against the model that will serve it, before anything runs.

The API calls ``validate_request`` before it queues a job and the engine calls it again before it
runs one, so both refuse the same requests with the same 4xx naming the field.
"""

from models.checks.request import validate_request

__all__ = ["validate_request"]
