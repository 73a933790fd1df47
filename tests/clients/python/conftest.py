"""Shared by every Python client's suite: the server under test is the one the Rust e2e driver
(`tests/e2e/clients.rs`) started, named by KUBECONFIG; FLOTILLA_IMAGE_RUN names a module that
runs until stopped and prints a line a second, FLOTILLA_IMAGE_ONCE one that prints and exits 0,
FLOTILLA_IMAGE_BUSYBOX a busybox image, where the node runs Linux containers."""

import os
import time

import pytest

KUBECONFIG = os.environ["KUBECONFIG"]
IMAGE_RUN = os.environ.get("FLOTILLA_IMAGE_RUN", "ticker:e2e")
IMAGE_ONCE = os.environ.get("FLOTILLA_IMAGE_ONCE", "hello:e2e")
# A busybox image, where the node runs Linux containers; otherwise empty.
IMAGE_BUSYBOX = os.environ.get("FLOTILLA_IMAGE_BUSYBOX", "")


def eventually(check, timeout=60, interval=0.2):
    """Calls `check` until it returns something true; returns that, or fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"still {last!r} after {timeout} s")


def upstream_status(message, reason, code, details):
    """The body upstream's API server writes for an error, byte for byte (field order, no
    spaces, a trailing newline), as clients' users compare it."""
    import json

    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": details, "code": code}
    return json.dumps(body, separators=(",", ":")) + "\n"
