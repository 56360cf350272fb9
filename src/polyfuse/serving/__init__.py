"""Deployment: HTTP serving with dynamic batching (app, batcher), ONNX export and int8 quantization
(export), magnitude pruning (prune). `backend` is the one interface the server runs: eager or ONNX."""
