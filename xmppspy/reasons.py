"""Why a connection failed, in words: the OS's or OpenSSL's message, not trio's wrapping."""

from __future__ import annotations

import os
import socket
import ssl

import trio


def reason(exc: BaseException, *, timeout: float | None = None) -> str:
    """One short phrase for a connection error; ``timeout`` is what a TooSlowError waited."""
    if isinstance(exc, trio.TooSlowError):
        return f"no answer within {timeout:g} s" if timeout is not None else "no answer in time"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):  # its errno is OpenSSL's, not the OS's
        return str(exc.reason or exc).replace("_", " ").lower()
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host ({exc.strerror})"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)  # trio adds the address to strerror; the person knows it
    if isinstance(exc, OSError) and exc.strerror:
        return str(exc.strerror)  # raised with a message of its own
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, BaseExceptionGroup):  # trio's "all attempts to connect ... failed"
        return "; ".join(
            dict.fromkeys(reason(inner, timeout=timeout) for inner in cause.exceptions)
        )
    if cause is not None:
        return reason(cause, timeout=timeout)
    return str(exc) or type(exc).__name__
