"""Free loopback ports, for local clusters: two training workers (TF_CONFIG), a Ray head."""

import socket


def free_ports(n, host="127.0.0.1"):
    """``n`` distinct ports free on ``host`` now (all bound at once, so no two are equal).

    Another process may take one before the caller binds it; callers on a shared machine
    retry or fail with the port in the message."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()
