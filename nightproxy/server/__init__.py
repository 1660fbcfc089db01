"""The HTTP server: the app factory, its typed state, handlers, middlewares and metrics."""
