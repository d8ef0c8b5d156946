"""A pool of vLLM OpenAI servers serving one model.

Choice by fewest outstanding requests among usable endpoints; a connect error, timeout or 5xx
before any byte was streamed moves the call to the next endpoint.

An endpoint is out of use while it is unhealthy (`unhealthy_after` failed health probes in a
row; back after one success) or ejected (`eject_after` failed calls in a row, as Envoy's outlier
detection does; out for `cooldown_s`, doubling per ejection in a row up to 8x, or until a health
probe passes). A frozen server (SIGSTOP, a wedged event loop) still accepts TCP connections, so
neither a connect error nor a timeout shows it quickly: a call that gets no byte for
`first_byte_timeout_s` asks the endpoint's /health, and one that does not answer within
`health_timeout_s` is ejected at once and the call moves on. A live server that is merely
generating is waited on, up to `timeout_s`; running out of it there is the request's length,
not the server's fault, so it does not count towards ejection (else any client could eject
servers with long requests).

Beside the health check, each endpoint's own /metrics (running and waiting requests, KV-cache
and prefix-cache figures) is read every `metrics_interval_s` into `Endpoint.engine`
(engine_poll.py, engine_state.py): what a load- or prefix-aware choice can score by.
"""

from gateway.backends.vllm_pool.endpoints import Endpoint
from gateway.backends.vllm_pool.engine_state import EndpointReport, EngineState
from gateway.backends.vllm_pool.pool import VllmPool
from gateway.backends.vllm_pool.stream import VllmStream

__all__ = ["Endpoint", "EndpointReport", "EngineState", "VllmPool", "VllmStream"]
