"""How steering reaches the model during a guarded call.

- `backend`: `SteeringPlan` (one guard's deltas, gate and device probe) and `SteeringBackend`, the
  one interface the guard generates through (`steer`, `prepass`, `generate`, `first_token_logits`).
- `eager` / `eager_backend`: forward hooks driven per thread by a context variable (any generate).
- `static` / `static_backend`: hooks that read device buffers, for compiled generation.
- `access`: the per-model shared/exclusive lock that keeps static requests and eager calls apart.
"""
