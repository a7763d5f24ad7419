# A local stand-in for mher/flower (ops/images.sh): Flower from PyPI with Celery's Redis transport, run as user
# flower with `celery flower` (it reads CELERY_BROKER_URL, FLOWER_* and celeryconfig.py on PYTHONPATH).
ARG PYTHON_IMAGE=litemedsam-local/python:3.11-slim
FROM ${PYTHON_IMAGE}
ARG FLOWER_VERSION=2.0.1
RUN pip install --no-cache-dir "flower==${FLOWER_VERSION}" "celery[redis]>=5.3" \
 && useradd --create-home --uid 10002 flower
ENV PYTHONUNBUFFERED=1
USER flower
WORKDIR /home/flower
EXPOSE 5555
CMD ["celery", "flower"]
