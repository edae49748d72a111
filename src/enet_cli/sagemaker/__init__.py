"""Amazon SageMaker: the container contract (contract.py); job submission comes later."""
