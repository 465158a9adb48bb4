"""The shared vocabulary of actq: wire models, indices, tables, errors. Pure data: no torch, flask or celery."""
