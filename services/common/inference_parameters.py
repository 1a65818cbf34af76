"""Request and response parameters that routers and workers both read.

``timeout`` is Triton's: how long the server may hold a request, in microseconds (0 or
less: no limit). ``shunter_status_code`` is ours: on a failed ModelStreamInfer response
it carries the gRPC status code the same request would have failed with as a ModelInfer
call, since the protocol's stream errors are only a message.
"""

TIMEOUT = "timeout"
STATUS_CODE = "shunter_status_code"
