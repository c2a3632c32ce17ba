"""The TranslationPipeline operator (Kopf).

Layout: ``builders`` and ``placement`` are pure functions (spec + cluster facts -> manifests),
``status`` turns observed Deployments into conditions, ``kube`` is the small client layer that
applies manifests idempotently, ``handlers`` holds the thin Kopf handlers, ``main`` the entry
point (``livetranslate operator``). ``scaling/`` is the autoscaler, which writes replicas.
"""
