"""Python face of the C transfer engine (shm, tcp; rdma discovery)."""
from .engine import (READ, WRITE, AuthFailed, RequestStatus, TransferEngine, rdma_probe,
                     split_target)

__all__ = ["TransferEngine", "RequestStatus", "AuthFailed", "READ", "WRITE", "rdma_probe",
           "split_target"]
