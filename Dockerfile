FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY towerstream towerstream
COPY streams streams
COPY towers towers
COPY index_store index_store
COPY producers producers
RUN pip install --no-cache-dir -c constraints.txt --extra-index-url https://download.pytorch.org/whl/cpu -e .
ENV TOWERSTREAM_DATA_DIR=/data TOWERSTREAM_WEB_HOST=0.0.0.0
VOLUME /data
EXPOSE 6066
CMD ["faust", "-A", "streams.app", "worker", "-l", "info"]
