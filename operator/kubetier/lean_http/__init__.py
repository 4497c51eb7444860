"""Shared lean HTTP/1.1 server core for kubetier's data paths (router, engine simulator)."""

from kubetier.lean_http.errors import error_body
from kubetier.lean_http.server import Handler, Limits, Request, Response, close_connections, port_of, start_server

__all__ = ["Handler", "Limits", "Request", "Response", "close_connections", "error_body", "port_of", "start_server"]
