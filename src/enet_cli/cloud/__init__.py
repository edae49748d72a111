"""The SageMaker client, run on the user's machine: the job plan and submission (plan.py,
launch.py, source.py), tuning (tune.py), endpoints and batch transform (deploy.py,
package.py), training jobs after the fact (jobs.py), and the AWS session they share (aws.py).

Layer 7: may import the layers below (the engine table, serving's exporter, the container's
contract and handler). The SageMaker SDK is imported inside the functions that need it.
"""
