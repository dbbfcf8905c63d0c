"""Kubeflow pipeline definitions (compiled and run through ``ferflow pipeline``)."""
