# One image for every actq process: `actq api`, `actq worker`, `actq db upgrade`.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 HF_HOME=/hf-cache
WORKDIR /app

# torch first and pinned (the PyPI wheel carries its CUDA libraries).
RUN pip install torch==2.13.0

COPY pyproject.toml README.md ./
COPY models ./models
COPY api ./api
COPY worker ./worker
COPY migrations ./migrations
COPY examples ./examples
RUN pip install .

EXPOSE 8000
ENTRYPOINT ["actq"]
CMD ["api", "--bind", "0.0.0.0:8000"]
