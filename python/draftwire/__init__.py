"""Draftwire producers in Python: write a job's training samples (the target's hidden states)
into its feature store and commit them to its queue, as docs/wire.md specifies.

    from draftwire import Producer
    p = await Producer.connect(run_dir="runs/J", producer_id="py-0")
"""
from .errors import (AuthError, BackpressureError, DecodeError, DraftwireError, InputClosed, InputClosedError,
                     InvalidArgumentError, RequestTimeoutError, SchemaError, StaleGenerationError, UnavailableError)
from .job import JobInfo, load_job
from .keys import Keys
from .producer import Prepared, Producer, PutResult, SyncProducer

__version__ = "0.1.0"
__all__ = [
    "Producer", "SyncProducer", "PutResult", "Prepared", "JobInfo", "load_job", "Keys",
    "DraftwireError", "AuthError", "SchemaError", "InvalidArgumentError", "StaleGenerationError", "BackpressureError",
    "UnavailableError", "RequestTimeoutError", "InputClosed", "InputClosedError", "DecodeError",
]
