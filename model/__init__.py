"""MIND in PyTorch: data, model, training and offline evaluation. Knows nothing of Kafka or Milvus."""
