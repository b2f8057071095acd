"""One small module per DVC stage: read params.yaml, call the usam library, write the stage's outs."""
