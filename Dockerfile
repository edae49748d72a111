# enet-cli training image for Amazon SageMaker: AWS's TensorFlow training container of the
# mode, with this enet-cli installed and set as the job's program.
#
# Built FROM the Deep Learning Container (the tags the SageMaker SDK uses) that carries the
# distributed library of the mode: MODE=ddp -> TF 2.11 + SMDDP (Python 3.9), MODE=mp ->
# TF 2.6 + SMP v1 (Python 3.8), MODE=single -> the newest TF container. The container's
# TensorFlow is kept: the entry script installs the wheel with that TensorFlow pinned (the
# same command a job without --image-uri runs). The image keeps AWS's entry point, so the
# SageMaker training toolkit still starts the program - through mpirun (SMP) or smddprun
# (SMDDP) when the job's distribution asks for them.
#
#   python -m enet_cli.cloud.source build/source     # the wheel + enet_entry.py
#   docker build --build-arg MODE=ddp --build-arg REGION=us-east-1 -t enet-cli:ddp .
#   (push to ECR, then: enet launch DATA --mode ddp --image-uri <that image>)
ARG MODE=ddp
ARG REGION=us-east-1
ARG BASE_single=763104351884.dkr.ecr.${REGION}.amazonaws.com/tensorflow-training:2.19.0-gpu-py312
ARG BASE_ddp=763104351884.dkr.ecr.${REGION}.amazonaws.com/tensorflow-training:2.11.0-gpu-py39
ARG BASE_mp=763104351884.dkr.ecr.${REGION}.amazonaws.com/tensorflow-training:2.6.0-gpu-py38

FROM ${BASE_single} AS base-single
FROM ${BASE_ddp} AS base-ddp
FROM ${BASE_mp} AS base-mp
FROM base-${MODE}

COPY build/source/ /opt/ml/code/
RUN python /opt/ml/code/enet_entry.py --install-only \
 && python -c "import enet_cli.core.backend, tensorflow as tf; print('enet-cli on TF', tf.__version__)"

ENV TF_CPP_MIN_LOG_LEVEL=2 \
    SAGEMAKER_PROGRAM=enet_entry.py \
    SAGEMAKER_SUBMIT_DIRECTORY=/opt/ml/code
