"""A client for PySandbox: run untrusted Python in the service's sandbox, now or as a job.

    from pysandbox_client import Client
    with Client("http://localhost:8080") as sandbox:
        print(sandbox.run("def main():\\n    return 6 * 7").result)
"""
from pysandbox_client.client import NO_INPUT, AsyncClient, Client, Retries
from pysandbox_client.errors import (
    ERRORS,
    CanceledError,
    ClientError,
    PySandboxError,
    ScriptError,
    ServerError,
    ServiceUnreachableError,
    UnavailableError,
)
from pysandbox_client.models import (
    JobQueued,
    JobState,
    OutFile,
    RunOutput,
    RunResult,
    SessionRunResult,
    SessionState,
    save_files,
)
from pysandbox_client.signatures import verify_signature

__all__ = ["NO_INPUT", "AsyncClient", "Client", "Retries", "ERRORS", "CanceledError", "ClientError",
           "PySandboxError", "ScriptError", "ServerError", "ServiceUnreachableError", "UnavailableError",
           "JobQueued", "JobState", "OutFile", "RunOutput", "RunResult", "save_files", "SessionRunResult",
           "SessionState", "verify_signature"]
