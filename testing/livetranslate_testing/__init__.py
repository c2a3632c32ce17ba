"""Test support for LiveTranslate (dev only, never in an image): the Kubernetes emulator, speech
synthesis, fuzzers, PromQL and Grafana helpers, figures. Installed by scripts/bootstrap.sh."""
