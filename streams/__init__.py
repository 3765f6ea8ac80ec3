"""The faust-streaming real-time interest updater and recall. Never imports `model/` or torch."""
