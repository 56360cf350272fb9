"""Tables, schemas and per-modality processors: table row -> tensors."""
