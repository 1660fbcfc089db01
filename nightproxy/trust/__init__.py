"""Trusted publishing: CI jobs prove who they are with their provider's OIDC token and get a
short-lived upload token for their own projects.

``claims`` holds the pure rules (which publisher a verified token speaks for), ``keys`` the
issuer's key set fetched with the app's HTTP client, ``verify`` the token checks done with
PyJWT, ``ledger`` the state that outlives a process (seen ``jti``s, minted tokens) and
``minted`` the tokens handed out.
"""
