"""The simple repository API as pure code: filenames, the records a page describes, parsing
upstream pages, rendering PEP 503/691 pages and content negotiation.

This package is the bottom layer: it imports nothing else of nightproxy and does no I/O.
"""
