"""Integrations: the libraries users train and track with, each in its own module that imports it.

``lightning`` (PyTorch Lightning: ``fit``), ``hf`` (Hugging Face Transformers: ``train`` and
``PBTCallback``) train through the loop API (``worker.session``); ``mlflow`` and ``wandb`` are
the trackers ``worker.tracking`` sends an experiment's ``[tracking]`` to, built by the factories
of ``trackers`` that ``pbt-worker`` hands it. Each needs its extra (``pip install
'pbt-mq[lightning]'`` ...). Only a worker (or a user's training function) imports them: never the
arbiter or the CLI (``trackers`` itself imports no tracker library).
"""
