# pp_aif in a container: installs the project and runs the main job (README's first command).
#   docker build -t pp_aif .
#   docker run --rm -v "$PWD/out:/work/out" pp_aif                  # the main job, files in ./out
#   docker run --rm pp_aif fit tmaze /data/choices.csv --out /work/out/fit.nc   # any pp-aif command
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLBACKEND=Agg \
    OMP_NUM_THREADS=1

# The CPU build of torch first: the one on PyPI pulls multi-GB CUDA libraries.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /src
COPY pyproject.toml README.md ./
COPY pp_aif ./pp_aif
COPY models ./models
RUN pip install . && rm -rf /src

RUN useradd --create-home runner && mkdir /work && chown runner /work
USER runner
WORKDIR /work
ENTRYPOINT ["pp-aif"]
CMD ["simulate", "tmaze", "--out", "/work/out"]
