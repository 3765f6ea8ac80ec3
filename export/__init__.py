"""Checkpoint → serving artifact (ONNX user tower, item vectors, vocabularies, manifest) and its runtime."""
