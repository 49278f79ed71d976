"""Registry entries, one module per layer family (imported by ``layer_registry()``)."""
