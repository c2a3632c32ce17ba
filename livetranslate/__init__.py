"""LiveTranslate: live speech translation as Kubernetes-native infrastructure."""

__version__ = "0.1.0"
