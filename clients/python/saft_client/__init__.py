"""Python client of the SAFT fine-tuning service. Depends only on httpx and pydantic.

from saft_client import Client
c = Client("http://127.0.0.1:8000", api_key="saft_...")     # or SAFT_URL / SAFT_API_KEY
ds = c.datasets.upload("./my_images")     # large ones in resumable parts
job = c.jobs.wait(c.jobs.create(dataset=ds, ratio=0.01, epochs=2), on_event=print)
"""

__version__ = "0.1.0"

from . import webhooks
from ._base import RetryPolicy
from .aio import AsyncClient
from .client import Client
from .errors import (
    APIError,
    BadRequest,
    ChecksumMismatch,
    Conflict,
    ConnectionFailed,
    Forbidden,
    Gone,
    JobFailed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    SaftClientError,
    ServerError,
    StreamError,
    Unauthorized,
    Unavailable,
    ValidationError,
)
from .models import (
    Classification,
    Dataset,
    Evaluation,
    Job,
    JobEvent,
    Mask,
    ModelInfo,
    Upload,
    UploadPart,
    Usage,
    Webhook,
    WebhookDelivery,
)
from .webhooks import WebhookVerificationError

__all__ = [
    "APIError",
    "AsyncClient",
    "BadRequest",
    "ChecksumMismatch",
    "Classification",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Dataset",
    "Evaluation",
    "Forbidden",
    "Gone",
    "Job",
    "JobEvent",
    "JobFailed",
    "Mask",
    "ModelInfo",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RetryPolicy",
    "SaftClientError",
    "ServerError",
    "StreamError",
    "Unauthorized",
    "Unavailable",
    "Upload",
    "UploadPart",
    "Usage",
    "ValidationError",
    "Webhook",
    "WebhookDelivery",
    "WebhookVerificationError",
    "__version__",
    "webhooks",
]
