"""The `enet` commands, one module per side: data.py (preprocess, model summary), train.py
(train, demo), serve.py (evaluate, predict, export, benchmark), cloud.py (launch, tune,
deploy, transform, undeploy, invoke, jobs). Each turns options into settings objects, calls
one function of the layers below, and prints the summary; each has `register(app)`.

The top layer under cli.py: commands import every layer below, never each other or cli.py
(shared option building is options.py). TensorFlow is imported inside the commands that
need it, so `enet --help` and mistakes in options stay fast.
"""
