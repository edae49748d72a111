# enet-cli training image for Amazon SageMaker (first sketch; `enet launch` will finish it).
#
# Built FROM the AWS Deep Learning Container that carries the distributed library of the
# mode: MODE=ddp -> TF 2.11 + SMDDP (Python 3.9), MODE=mp -> TF 2.6 + SMP v1 (Python 3.8).
# The container's TensorFlow is kept: enet-cli installs without replacing it.
#
#   docker build --build-arg MODE=ddp --build-arg REGION=us-east-1 -t enet-cli:ddp .
ARG MODE=ddp
ARG REGION=us-east-1
ARG BASE_ddp=763104351884.dkr.ecr.${REGION}.amazonaws.com/tensorflow-training:2.11.0-gpu-py39-cu112-ubuntu20.04-sagemaker
ARG BASE_mp=763104351884.dkr.ecr.${REGION}.amazonaws.com/tensorflow-training:2.6.0-gpu-py38-cu112-ubuntu20.04

FROM ${BASE_ddp} AS base-ddp
FROM ${BASE_mp} AS base-mp
FROM base-${MODE}

COPY pyproject.toml README.md /opt/enet-cli/
COPY src /opt/enet-cli/src
RUN pip install --no-cache-dir /opt/enet-cli \
 && python -c "import enet_cli.backend"

ENV TF_CPP_MIN_LOG_LEVEL=2
# SageMaker starts a training image as `docker run IMAGE train`: with this entry point that
# is `enet train`, which finds the job's data, hyperparameters and output paths under
# /opt/ml by itself (src/enet_cli/sagemaker/contract.py). Distributed modes will go through
# the training toolkit (mpirun/smddprun) instead; `enet launch` finishes that part.
ENTRYPOINT ["enet"]
